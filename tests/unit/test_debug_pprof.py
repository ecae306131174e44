"""
The profile.proto encoder, checked by decoding its output with the official protobuf runtime
against a descriptor of pprof's profile.proto built here (an independent decoder, not ours).
"""
import gzip

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from telegen.debug.pprof import ProfileBuilder

_T = descriptor_pb2.FieldDescriptorProto

# profile.proto (github.com/google/pprof/proto/profile.proto), field numbers and types.
_MESSAGES = {
    "Profile": [("sample_type", 1, "ValueType", True), ("sample", 2, "Sample", True),
                ("mapping", 3, "Mapping", True), ("location", 4, "Location", True),
                ("function", 5, "Function", True), ("string_table", 6, _T.TYPE_STRING, True),
                ("drop_frames", 7, _T.TYPE_INT64, False), ("keep_frames", 8, _T.TYPE_INT64, False),
                ("time_nanos", 9, _T.TYPE_INT64, False), ("duration_nanos", 10, _T.TYPE_INT64, False),
                ("period_type", 11, "ValueType", False), ("period", 12, _T.TYPE_INT64, False),
                ("comment", 13, _T.TYPE_INT64, True), ("default_sample_type", 14, _T.TYPE_INT64, False)],
    "ValueType": [("type", 1, _T.TYPE_INT64, False), ("unit", 2, _T.TYPE_INT64, False)],
    "Sample": [("location_id", 1, _T.TYPE_UINT64, True), ("value", 2, _T.TYPE_INT64, True),
               ("label", 3, "Label", True)],
    "Label": [("key", 1, _T.TYPE_INT64, False), ("str", 2, _T.TYPE_INT64, False),
              ("num", 3, _T.TYPE_INT64, False), ("num_unit", 4, _T.TYPE_INT64, False)],
    "Mapping": [("id", 1, _T.TYPE_UINT64, False), ("memory_start", 2, _T.TYPE_UINT64, False),
                ("memory_limit", 3, _T.TYPE_UINT64, False), ("file_offset", 4, _T.TYPE_UINT64, False),
                ("filename", 5, _T.TYPE_INT64, False), ("build_id", 6, _T.TYPE_INT64, False),
                ("has_functions", 7, _T.TYPE_BOOL, False), ("has_filenames", 8, _T.TYPE_BOOL, False),
                ("has_line_numbers", 9, _T.TYPE_BOOL, False), ("has_inline_frames", 10, _T.TYPE_BOOL, False)],
    "Location": [("id", 1, _T.TYPE_UINT64, False), ("mapping_id", 2, _T.TYPE_UINT64, False),
                 ("address", 3, _T.TYPE_UINT64, False), ("line", 4, "Line", True),
                 ("is_folded", 5, _T.TYPE_BOOL, False)],
    "Line": [("function_id", 1, _T.TYPE_UINT64, False), ("line", 2, _T.TYPE_INT64, False)],
    "Function": [("id", 1, _T.TYPE_UINT64, False), ("name", 2, _T.TYPE_INT64, False),
                 ("system_name", 3, _T.TYPE_INT64, False), ("filename", 4, _T.TYPE_INT64, False),
                 ("start_line", 5, _T.TYPE_INT64, False)],
}


def _profile_class():
    fd = descriptor_pb2.FileDescriptorProto(name="telegen_test_profile.proto", package="perftools.profiles",
                                            syntax="proto3")
    for name, fields in _MESSAGES.items():
        message = fd.message_type.add(name=name)
        for field_name, number, kind, repeated in fields:
            field = message.field.add(name=field_name, number=number,
                                      label=_T.LABEL_REPEATED if repeated else _T.LABEL_OPTIONAL)
            if isinstance(kind, str):
                field.type = _T.TYPE_MESSAGE
                field.type_name = f".perftools.profiles.{kind}"
            else:
                field.type = kind
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("perftools.profiles.Profile"))


Profile = _profile_class()


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


def test_samples_round_trip_through_the_protobuf_runtime():
    """Stacks, values, labels, types and period decode to what was added."""
    builder = ProfileBuilder([("samples", "count"), ("cpu", "nanoseconds")], period_type=("cpu", "nanoseconds"),
                             period=10_000_000, default_sample_type="cpu", time_nanos=123, duration_nanos=456,
                             comments=["hello"])
    leaf = ("pkg.leaf", "/src/pkg.py", 12, 10)
    root = ("pkg.root", "/src/pkg.py", 3, 1)
    builder.add([leaf, root], [2, 20_000_000], {"thread": "MainThread"})
    builder.add([root], [1, 300], {"thread": "worker"})
    profile = parse_profile(builder.gzipped())

    assert profile.string_table[0] == ""
    assert sample_type_names(profile) == [("samples", "count"), ("cpu", "nanoseconds")]
    assert profile.string_table[profile.default_sample_type] == "cpu"
    assert (profile.string_table[profile.period_type.type], profile.period) == ("cpu", 10_000_000)
    assert (profile.time_nanos, profile.duration_nanos) == (123, 456)
    assert [profile.string_table[c] for c in profile.comment] == ["hello"]
    assert stacks_of(profile) == [
        (["pkg.leaf", "pkg.root"], [2, 20_000_000], {"thread": "MainThread"}),
        (["pkg.root"], [1, 300], {"thread": "worker"}),
    ]


def test_functions_and_locations_are_interned_with_file_and_lines():
    """One function per (name, file, start line); one location per (function, line); mapping says symbolized."""
    builder = ProfileBuilder([("goroutine", "count")])
    a12 = ("m.a", "/m.py", 12, 10)
    a13 = ("m.a", "/m.py", 13, 10)
    for _ in range(3):
        builder.add([a12], [1])
    builder.add([a13], [1])
    profile = parse_profile(builder.encode())

    assert len(profile.function) == 1
    function = profile.function[0]
    assert profile.string_table[function.filename] == "/m.py"
    assert function.start_line == 10
    assert sorted(loc.line[0].line for loc in profile.location) == [12, 13]
    assert all(loc.mapping_id == 1 for loc in profile.location)
    assert profile.mapping[0].has_functions and profile.mapping[0].has_line_numbers
    assert len(profile.sample) == 4


def test_negative_and_large_values_encode_as_int64():
    """Varints carry 64-bit two's complement for negatives and values past 32 bits."""
    builder = ProfileBuilder([("delta", "bytes")])
    builder.add([], [-5])
    builder.add([], [1 << 40])
    profile = parse_profile(builder.encode())
    assert [list(s.value) for s in profile.sample] == [[-5], [1 << 40]]


def test_output_is_gzip():
    """The wire form is gzip, as go tool pprof and net/http/pprof use."""
    assert ProfileBuilder([("x", "count")]).gzipped()[:2] == b"\x1f\x8b"
