"""
A hand-written encoder for pprof's profile.proto (github.com/google/pprof/proto/profile.proto).

Why by hand: the message is small and stable, and encoding it with a ~100 line protobuf wire
writer avoids shipping a generated module (there is no protoc at build time on these machines).
Only the fields Telegen fills are written; zero values are omitted, as proto3 does.
"""
import gzip
import sys
import time

from telegen.protowire import varint

# Wire types of the protobuf encoding.
_VARINT = 0
_LEN = 2


class _Message:
    """Accumulates the encoded fields of one message."""

    def __init__(self):
        self.buf = bytearray()

    def int(self, field, value):
        """A varint field (int64, uint64, bool); zero is the default and is not written."""
        if value:
            self.buf += varint(field << 3 | _VARINT) + varint(int(value))
        return self

    def bytes(self, field, data, always=False):
        """A length-delimited field: bytes, a string or an embedded message."""
        if data or always:
            self.buf += varint(field << 3 | _LEN) + varint(len(data)) + data
        return self

    def packed(self, field, values):
        """A packed repeated varint field (proto3's default for repeated scalars)."""
        if values:
            self.bytes(field, b"".join(varint(int(v)) for v in values))
        return self


class ProfileBuilder:
    """
    Collects samples and encodes one Profile message.

    Frames are (function name, file name, line, first line of the function) tuples. Functions and
    locations are interned so a stack seen a thousand times costs one entry each.
    """

    def __init__(self, sample_types, period_type=None, period=0, default_sample_type=None,
                 time_nanos=None, duration_nanos=0, comments=()):
        self._strings = {"": 0}
        self._functions = {}
        self._locations = {}
        self._samples = []
        self.sample_types = [(self.string(t), self.string(u)) for t, u in sample_types]
        self.period_type = (self.string(period_type[0]), self.string(period_type[1])) if period_type else None
        self.period = period
        self.default_sample_type = self.string(default_sample_type) if default_sample_type else 0
        self.time_nanos = time.time_ns() if time_nanos is None else time_nanos
        self.duration_nanos = duration_nanos
        self._mapping_file = self.string(sys.executable or "python")
        self.comments = [self.string(c) for c in comments]

    def string(self, text):
        """The string table index of text."""
        index = self._strings.get(text)
        if index is None:
            index = self._strings[text] = len(self._strings)
        return index

    def location(self, frame):
        """The location id of one frame (name, filename, line, start_line)."""
        name, filename, line, start_line = frame
        function_key = (name, filename, start_line)
        function_id = self._functions.get(function_key)
        if function_id is None:
            function_id = self._functions[function_key] = len(self._functions) + 1
        location_key = (function_id, line)
        location_id = self._locations.get(location_key)
        if location_id is None:
            location_id = self._locations[location_key] = len(self._locations) + 1
        return location_id

    def add(self, stack, values, labels=None):
        """
        Add one sample: stack is a sequence of frames, innermost first (pprof's order), values
        one number per sample type, labels a dict of str -> str (string labels only).
        """
        location_ids = [self.location(frame) for frame in stack]
        label_ids = [(self.string(k), self.string(str(v))) for k, v in (labels or {}).items()]
        self._samples.append((location_ids, list(values), label_ids))

    def encode(self):
        """The serialized Profile message (not compressed)."""
        out = _Message()
        for type_id, unit_id in self.sample_types:
            out.bytes(1, _Message().int(1, type_id).int(2, unit_id).buf, always=True)
        for location_ids, values, label_ids in self._samples:
            sample = _Message().packed(1, location_ids).packed(2, values)
            for key, value in label_ids:
                sample.bytes(3, _Message().int(1, key).int(2, value).buf, always=True)
            out.bytes(2, sample.buf, always=True)
        # One mapping that says every location already carries its function, file and line, so
        # pprof does not try to symbolize addresses (there are none: this is Python).
        mapping = _Message().int(1, 1).int(5, self._mapping_file)
        out.bytes(3, mapping.int(7, True).int(8, True).int(9, True).buf)
        for (function_id, line), location_id in self._locations.items():
            line_msg = _Message().int(1, function_id).int(2, line)
            loc = _Message().int(1, location_id).int(2, 1).bytes(4, line_msg.buf, always=True)
            out.bytes(4, loc.buf)
        for (name, filename, start_line), function_id in self._functions.items():
            fn = _Message().int(1, function_id).int(2, self.string(name)).int(3, self.string(name))
            out.bytes(5, fn.int(4, self.string(filename)).int(5, start_line).buf)
        for text in self._strings:  # dicts keep insertion order: the index order
            out.bytes(6, text.encode("utf-8"), always=True)
        out.int(9, self.time_nanos).int(10, self.duration_nanos)
        if self.period_type:
            out.bytes(11, _Message().int(1, self.period_type[0]).int(2, self.period_type[1]).buf, always=True)
        out.int(12, self.period).packed(13, self.comments).int(14, self.default_sample_type)
        return bytes(out.buf)

    def gzipped(self):
        """The profile as the pprof tools expect it on the wire: gzipped profile.proto."""
        return gzip.compress(self.encode(), compresslevel=6)
