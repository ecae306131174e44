"""
Export requests assembled from already-encoded records, in protobuf wire format.

Why: a repeated message field is, on the wire, just its elements one after another, each as
<tag><length><bytes>. Records are serialized once when queued (which also gives their exact size
for the byte bound), and a batch is then a join of byte strings: no message copies, no second
encoding. The layout is the same for all OTLP signals (request.1 -> Resource*; Resource*.1 =
resource, .2 -> Scope*; Scope*.1 = scope, .2 -> records); kinds.py checks it against the protos.
"""
from telegen.protowire import length_delimited as _field
from telegen.protowire import varint
from telegen.signals.common import SCOPE, resource

_TAG_1 = b"\x0a"  # field 1, wire type 2 (length-delimited)
_TAG_2 = b"\x12"  # field 2, wire type 2
# Tag and length of a field-2 record for every length up to 4 KiB (most spans and metrics): one
# list index per record instead of a varint encoding, in the loop that frames every exported record.
_RECORD_PREFIX = [_TAG_2 + varint(n) for n in range(4096)]




_SCOPE_FIELD = _field(_TAG_1, SCOPE.SerializeToString())


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
        for data in chunk.records:
            n = len(data)
            parts += (_RECORD_PREFIX[n] if n < 4096 else _TAG_2 + varint(n), data)
    out = []
    for resource_bytes, parts in groups.values():
        scope = b"".join(parts)
        body = _field(_TAG_1, resource_bytes) + _field(_TAG_2, scope)
        out.append(_field(_TAG_1, body))
    return b"".join(out)
