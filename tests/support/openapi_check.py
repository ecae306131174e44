"""Validating answers against the agent's own /openapi.json (or telegen.api.openapi's document)."""
import jsonschema


def schema_validator(document, path, method, code):
    """A jsonschema validator for one documented response, resolving #/components refs."""
    response = document["paths"][path][method]["responses"][str(code)]
    schema = response["content"]["application/json"]["schema"]
    wrapped = {"$defs": {}, "components": document["components"], **schema}
    return jsonschema.Draft202012Validator(wrapped)
