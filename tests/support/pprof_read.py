"""Reading a gzipped pprof profile back with the real message classes: samples as (function names, values, labels)."""
import gzip

from telegen.profiling.pprof_proto import Profile


def parse_profile(data):
    """Decode profile.proto bytes (gzipped or not) with the protobuf runtime."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    profile = Profile()
    profile.ParseFromString(data)
    return profile


def stacks_of(profile):
    """[(function names innermost first, values, {label: value})] of every sample."""
    strings = profile.string_table
    functions = {f.id: f for f in profile.function}
    locations = {loc.id: loc for loc in profile.location}
    out = []
    for sample in profile.sample:
        names = [strings[functions[locations[i].line[0].function_id].name] for i in sample.location_id]
        labels = {strings[label.key]: strings[label.str] for label in sample.label}
        out.append((names, list(sample.value), labels))
    return out


def sample_type_names(profile):
    return [(profile.string_table[t.type], profile.string_table[t.unit]) for t in profile.sample_type]
