"""
OTLP profiles (opentelemetry-proto's profiles/v1development, the version with the request-level
ProfilesDictionary and stack_table) for the CPU profiler, and the assembly of export requests.

Why one record per window: a profile's indices point into the dictionary of the request it
travels in, so the profiler builds, in its thread, one ProfilesData per window holding every
process's ResourceProfiles and the one dictionary they share. ProfilesData and
ExportProfilesServiceRequest are the same message on the wire, so a batch of one record is sent
as is and the reactor does no work on it. Only a batch of several windows (after an outage) is
merged, by re-interning every profile into one dictionary.
"""
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import ExportProfilesServiceRequest
from opentelemetry.proto.profiles.v1development import profiles_pb2 as pb

from telegen.signals.common import SCOPE, resource


class Dictionary:
    """The tables of a ProfilesDictionary with interning; index 0 of each is the zero value, as the spec asks."""

    def __init__(self):
        self.message = pb.ProfilesDictionary()
        self._strings = {}
        self._functions = {}
        self._locations = {}
        self._stacks = {}
        self.string("")
        self.message.mapping_table.add()
        self.message.location_table.add()
        self.message.function_table.add()
        self.message.stack_table.add()
        self.message.link_table.add()
        self.message.attribute_table.add()

    def string(self, text):
        index = self._strings.get(text)
        if index is None:
            index = self._strings[text] = len(self.message.string_table)
            self.message.string_table.append(text)
        return index

    def function(self, name, filename):
        key = (name, filename)
        index = self._functions.get(key)
        if index is None:
            index = self._functions[key] = len(self.message.function_table)
            self.message.function_table.add(name_strindex=self.string(name), system_name_strindex=self.string(name),
                                            filename_strindex=self.string(filename))
        return index

    def location(self, name, module):
        key = (name, module)
        index = self._locations.get(key)
        if index is None:
            index = self._locations[key] = len(self.message.location_table)
            self.message.location_table.add().lines.add(function_index=self.function(name, module))
        return index

    def stack(self, frames):
        """The stack_table index of frames ((function, module), ...), innermost first."""
        key = tuple(frames)
        index = self._stacks.get(key)
        if index is None:
            index = self._stacks[key] = len(self.message.stack_table)
            known = self._locations.get     # most frames were seen in another stack: no call for them
            self.message.stack_table.add(location_indices=[known(f) or self.location(*f) for f in key])
        return index

    def frames(self, stack_index, source):
        """[(function, module)] of a stack of another dictionary `source` (a ProfilesDictionary)."""
        strings = source.string_table
        out = []
        for location_index in source.stack_table[stack_index].location_indices:
            function = source.function_table[source.location_table[location_index].lines[0].function_index]
            out.append((strings[function.name_strindex], strings[function.filename_strindex]))
        return out

    def add_profile(self, profile, source):
        """A copy of `profile` whose indices point into this dictionary instead of `source`."""
        out = pb.Profile()
        out.CopyFrom(profile)
        strings = source.string_table
        for value_type in (out.sample_type, out.period_type):
            value_type.type_strindex = self.string(strings[value_type.type_strindex])
            value_type.unit_strindex = self.string(strings[value_type.unit_strindex])
        for sample in out.samples:
            sample.stack_index = self.stack(self.frames(sample.stack_index, source))
        return out


def window_profiles(processes, window_start, duration, sample_rate):
    """
    The ProfilesData of one window: processes are (resource attributes, CPU samples, off-CPU
    samples), samples [(frames, value)]; one ResourceProfiles per process with a CPU profile
    (samples/count, period cpu nanoseconds) and, when it has any, an off-CPU one (off_cpu/nanoseconds).
    """
    dictionary = Dictionary()
    data = pb.ProfilesData()
    for attrs, cpu, off_cpu in processes:
        scope = data.resource_profiles.add(resource=resource(attrs)).scope_profiles.add(scope=SCOPE)
        if cpu:
            scope.profiles.append(_profile(dictionary, cpu, window_start, duration, ("samples", "count"),
                                           int(1e9 / sample_rate)))
        if off_cpu:
            scope.profiles.append(_profile(dictionary, off_cpu, window_start, duration, ("off_cpu", "nanoseconds"), 0))
    data.dictionary.CopyFrom(dictionary.message)
    return data


def _profile(dictionary, samples, window_start, duration, sample_type, period):
    """A Profile of one value per stack, its indices into `dictionary`."""
    profile = pb.Profile(time_unix_nano=int(window_start * 1e9), duration_nano=int(duration * 1e9), period=period)
    profile.sample_type.type_strindex = dictionary.string(sample_type[0])
    profile.sample_type.unit_strindex = dictionary.string(sample_type[1])
    if period:
        profile.period_type.type_strindex = dictionary.string("cpu")
        profile.period_type.unit_strindex = dictionary.string("nanoseconds")
    for frames, value in samples:
        profile.samples.add(stack_index=dictionary.stack(frames), values=[value])
    return profile


def profile_count(record):
    """The items a queued record counts for: its profiles."""
    if isinstance(record, bytes):
        record = pb.ProfilesData.FromString(record)
    return sum(len(sp.profiles) for rp in record.resource_profiles for sp in rp.scope_profiles)


def encode_request(chunks, resources):
    """
    The bytes of one ExportProfilesServiceRequest from queued ProfilesData records (which carry
    their own resources: `resources` is not needed): one record is already the request.
    """
    records = [record for chunk in chunks for record in chunk.records]
    if len(records) == 1:
        return records[0]
    dictionary = Dictionary()
    request = ExportProfilesServiceRequest()
    for record in records:
        data = pb.ProfilesData.FromString(record)
        for rp in data.resource_profiles:
            merged = request.resource_profiles.add(resource=rp.resource, schema_url=rp.schema_url)
            for sp in rp.scope_profiles:
                merged.scope_profiles.add(scope=sp.scope, schema_url=sp.schema_url).profiles.extend(
                    dictionary.add_profile(profile, data.dictionary) for profile in sp.profiles)
    request.dictionary.CopyFrom(dictionary.message)
    return request.SerializeToString()


def _check_same_wire_layout():
    """encode_request sends a ProfilesData as an ExportProfilesServiceRequest: fail loudly if they ever differ."""
    def layout(descriptor):
        return {(f.name, f.number, f.type, f.message_type and f.message_type.full_name) for f in descriptor.fields}
    assert layout(pb.ProfilesData.DESCRIPTOR) == layout(ExportProfilesServiceRequest.DESCRIPTOR)


_check_same_wire_layout()
