"""
OTLP profiles (opentelemetry-proto's profiles/v1development, the version with the request-level
ProfilesDictionary and stack_table) for the CPU profiler, and the assembly of export requests.

Why a dictionary per record and a merge per request: the export queue holds records of one
resource each and batches them freely, but a profile's indices point into the dictionary of the
request it travels in. So each queued record is a ProfilesData holding one profile and its own
dictionary, and encode_request() re-interns every profile of a batch into one dictionary.
Profiles are few (one per process and window), so decoding them again costs nothing that matters.
"""
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import ExportProfilesServiceRequest
from opentelemetry.proto.profiles.v1development import profiles_pb2 as pb

from telegen.signals.common import SCOPE


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
        """The stack_table index of frames [(function, module)], innermost first."""
        key = tuple(frames)
        index = self._stacks.get(key)
        if index is None:
            index = self._stacks[key] = len(self.message.stack_table)
            self.message.stack_table.add(location_indices=[self.location(n, m) for n, m in frames])
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


def cpu_profile(samples, window_start, duration, sample_rate):
    """One ProfilesData record of CPU samples ([(frames, count)]); period: cpu nanoseconds per sample."""
    return _profile(samples, window_start, duration, ("samples", "count"), int(1e9 / sample_rate))


def off_cpu_profile(samples, window_start, duration):
    """One ProfilesData record of time blocked ([(frames, nanoseconds)])."""
    return _profile(samples, window_start, duration, ("off_cpu", "nanoseconds"), 0)


def _profile(samples, window_start, duration, sample_type, period):
    """A profile of one value per stack and its own dictionary, as a ProfilesData record."""
    dictionary = Dictionary()
    profile = pb.Profile(time_unix_nano=int(window_start * 1e9), duration_nano=int(duration * 1e9), period=period)
    profile.sample_type.type_strindex = dictionary.string(sample_type[0])
    profile.sample_type.unit_strindex = dictionary.string(sample_type[1])
    if period:
        profile.period_type.type_strindex = dictionary.string("cpu")
        profile.period_type.unit_strindex = dictionary.string("nanoseconds")
    for frames, value in samples:
        profile.samples.add(stack_index=dictionary.stack(frames), values=[value])
    data = pb.ProfilesData(dictionary=dictionary.message)
    data.resource_profiles.add().scope_profiles.add().profiles.append(profile)
    return data


def encode_request(chunks, resources):
    """
    The bytes of one ExportProfilesServiceRequest from queued chunks of ProfilesData records: one
    ResourceProfiles per resource (encoded by the exporter's ResourceCache), one dictionary for all.
    """
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource

    dictionary = Dictionary()
    request = ExportProfilesServiceRequest()
    groups = {}
    for chunk in chunks:
        scope = groups.get(chunk.resource_key)
        if scope is None:
            resource_profiles = request.resource_profiles.add()
            resource_profiles.resource.CopyFrom(Resource.FromString(resources.encoded(chunk.resource_key,
                                                                                      chunk.resource_attrs)))
            scope = groups[chunk.resource_key] = resource_profiles.scope_profiles.add()
            scope.scope.CopyFrom(SCOPE)
        for record in chunk.records:
            data = pb.ProfilesData.FromString(record)
            for rp in data.resource_profiles:
                for sp in rp.scope_profiles:
                    scope.profiles.extend(dictionary.add_profile(p, data.dictionary) for p in sp.profiles)
    request.dictionary.CopyFrom(dictionary.message)
    return request.SerializeToString()
