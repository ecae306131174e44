"""
Builds pprof profiles (profile.proto) from symbolized stacks, with the real message classes of
telegen.profiling.pprof_proto.

Used by the /debug/pprof endpoints (Python stacks of the agent) and by the CPU profiler (native
and kernel stacks of the host's processes): both hand over frames already symbolized, so every
location carries its function and the profile's one mapping says so (pprof then never tries to
symbolize addresses itself).
"""
import gzip
import sys
import time

from telegen.profiling.pprof_proto import Profile


class ProfileBuilder:
    """
    Collects samples and encodes one Profile message.

    Frames are (function name, file name, line, first line of the function) tuples. Functions and
    locations are interned so a stack seen a thousand times costs one entry each.
    """

    def __init__(self, sample_types, period_type=None, period=0, default_sample_type=None,
                 time_nanos=None, duration_nanos=0, comments=(), mapping_file=None):
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
        self._mapping_file = self.string(mapping_file or sys.executable or "python")
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
        self.add_locations([self.location(frame) for frame in stack], values, labels)

    def add_locations(self, location_ids, values, labels=None):
        """add() for a caller that interned its frames with location() itself (and reuses the ids)."""
        label_ids = [(self.string(k), self.string(str(v))) for k, v in (labels or {}).items()]
        self._samples.append((location_ids, list(values), label_ids))

    def message(self):
        """The Profile message."""
        profile = Profile(time_nanos=self.time_nanos, duration_nanos=self.duration_nanos, period=self.period,
                          comment=self.comments, default_sample_type=self.default_sample_type)
        for type_id, unit_id in self.sample_types:
            profile.sample_type.add(type=type_id, unit=unit_id)
        for location_ids, values, label_ids in self._samples:
            sample = profile.sample.add(location_id=location_ids, value=values)
            for key, value in label_ids:
                sample.label.add(key=key, str=value)
        profile.mapping.add(id=1, filename=self._mapping_file, has_functions=True, has_filenames=True,
                            has_line_numbers=True)
        for (function_id, line), location_id in self._locations.items():
            profile.location.add(id=location_id, mapping_id=1).line.add(function_id=function_id, line=line)
        for (name, filename, start_line), function_id in self._functions.items():
            profile.function.add(id=function_id, name=self.string(name), system_name=self.string(name),
                                 filename=self.string(filename), start_line=start_line)
        profile.string_table.extend(self._strings)  # dicts keep insertion order: the index order
        if self.period_type:
            profile.period_type.type, profile.period_type.unit = self.period_type
        return profile

    def encode(self):
        """The serialized Profile message (not compressed)."""
        return self.message().SerializeToString()

    def gzipped(self, level=6):
        """The profile as the pprof tools expect it on the wire: gzipped profile.proto."""
        return gzip.compress(self.encode(), compresslevel=level)
