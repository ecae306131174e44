"""
The pprof ProfileBuilder, checked by decoding its output with the protobuf runtime against
telegen.profiling.pprof_proto (the descriptor of pprof's profile.proto, field for field).
"""
from telegen.debug.pprof import ProfileBuilder
from tests.support.pprof_read import parse_profile, sample_type_names, stacks_of


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
