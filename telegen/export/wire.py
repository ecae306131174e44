"""
Export requests assembled from already-encoded records, in protobuf wire format.

Why: a repeated message field is, on the wire, just its elements one after another, each as
<tag><length><bytes>. Records are serialized once when queued (which also gives their exact size
for the byte bound), and a batch is then a join of byte strings: no message copies, no second
encoding. The layout is the same for all OTLP signals (request.1 -> Resource*; Resource*.1 =
resource, .2 -> Scope*; Scope*.1 = scope, .2 -> records); kinds.py checks it against the protos.
"""
from itertools import chain

from telegen.protowire import LEN, tag, varint
from telegen.protowire import length_delimited as _field
from telegen.signals.common import SCOPE, resource

# The five fields a request is made of, the same numbers for every signal (kinds.py checks them
# against each signal's protos at import). Signal = trace, metrics, logs or profiles (v1development).
# opentelemetry/proto/collector/<signal>/v1/<signal>_service.proto:
_REQUEST_RESOURCES = tag(1, LEN)    # Export<Signal>ServiceRequest.resource_<records> (repeated)
# opentelemetry/proto/<signal>/v1/<signal>.proto:
_RESOURCE = tag(1, LEN)             # Resource<Records>.resource
_RESOURCE_SCOPES = tag(2, LEN)      # Resource<Records>.scope_<records> (repeated)
_SCOPE = tag(1, LEN)                # Scope<Records>.scope
_SCOPE_RECORDS = tag(2, LEN)        # Scope<Records>.spans | metrics | log_records | profiles (repeated)
# Tag and length of a record for every length up to 4 KiB (most spans and metrics): one list
# index per record instead of a varint encoding, in the loop that frames every exported record.
_RECORD_PREFIX = [_SCOPE_RECORDS + varint(n) for n in range(4096)]

_SCOPE_FIELD = _field(_SCOPE, SCOPE.SerializeToString())


class ResourceCache:
    """Encoded Resource messages by resource key, bounded (cleared when full) so it never grows unchecked."""

    def __init__(self, limit=4096):
        self._limit = limit
        self._cache = {}

    def encoded(self, key, attrs):
        data = self._cache.get(key)
        if data is None:
            if len(self._cache) >= self._limit:
                self._cache.clear()
            data = self._cache[key] = resource(attrs).SerializeToString()
        return data


def encode_request(chunks, resources):
    """
    The bytes of one Export*ServiceRequest from queued chunks: one Resource* per distinct
    resource (in first-seen order) with one Scope* (the telegen scope) holding its records in order.
    """
    groups = {}
    for chunk in chunks:
        group = groups.get(chunk.resource_key)
        if group is None:
            group = groups[chunk.resource_key] = [resources.encoded(chunk.resource_key, chunk.resource_attrs), [_SCOPE_FIELD]]
        parts = group[1]
        records = chunk.records
        lengths = list(map(len, records))
        if max(lengths, default=0) < len(_RECORD_PREFIX):
            # Every record's frame from the table, interleaved with the records, in C.
            parts += chain.from_iterable(zip(map(_RECORD_PREFIX.__getitem__, lengths), records))
        else:
            for n, data in zip(lengths, records):
                parts += (_RECORD_PREFIX[n] if n < len(_RECORD_PREFIX) else _SCOPE_RECORDS + varint(n), data)
    # One join for the whole request: the enclosing fields' heads are computed from the parts'
    # lengths, so the records are copied once (joining each level separately copied the ~200 KB
    # of a full batch three more times, which cost more than framing its records).
    out = []
    for resource_bytes, parts in groups.values():
        scope_len = sum(map(len, parts))
        resource_field = _field(_RESOURCE, resource_bytes)
        scope_head = _RESOURCE_SCOPES + varint(scope_len)
        out += (_REQUEST_RESOURCES, varint(len(resource_field) + len(scope_head) + scope_len), resource_field, scope_head)
        out += parts
    return b"".join(out)
