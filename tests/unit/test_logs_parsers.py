"""Line formats: Docker json-file and CRI envelopes (with pieces), JSON, logfmt, plain, times, trace context."""
import pytest

from telegen.logs.parsers import Format, parse_time
from telegen.logs.severity import detect

T = "2024-03-05T10:20:30.123456789Z"
T_NS = 1709634030123456789
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def records(fmt, *lines):
    f = Format(fmt, 1 << 20)
    return [p for p, _ in f.feed([(line, n) for n, line in enumerate(lines, 1)])]


def test_docker_json_file_lines_give_body_stream_and_time():
    (p,) = records("auto", '{"log":"GET / 200\\n","stream":"stderr","time":"%s"}' % T)
    assert (p.body, p.stream, p.time_ns) == ("GET / 200", "stderr", T_NS)


def test_docker_pieces_without_newline_are_joined():
    f = Format("docker", 1 << 20)
    out = f.feed([('{"log":"part one ","stream":"stdout","time":"%s"}' % T, 10),
                  ('{"log":"and two\\n","stream":"stdout","time":"%s"}' % T, 20)])
    assert [(p.body, end) for p, end in out] == [("part one and two", 20)]


def test_cri_partial_lines_are_joined_until_the_final_one():
    f = Format("auto", 1 << 20)
    out = f.feed([(f"{T} stdout P first ", 10), (f"{T} stdout P second ", 20)])
    assert out == [] and f.holding
    (p, end), = f.feed([(f"{T} stdout F third", 30)])
    assert (p.body, p.stream, p.time_ns, end) == ("first second third", "stdout", T_NS, 30)
    assert not f.holding


def test_an_unfinished_cri_message_is_flushed_whole():
    f = Format("cri", 1 << 20)
    f.feed([(f"{T} stderr P never finished", 10)])
    (p, end), = f.flush()
    assert (p.body, p.stream, end) == ("never finished", "stderr", 10)


def test_container_messages_are_parsed_as_application_lines():
    (p,) = records("cri", f'{T} stdout F {{"level":"error","msg":"boom","trace_id":"{TRACE}","span_id":"{SPAN}"}}')
    assert (p.body, p.severity_text, p.severity_number, p.stream) == ("boom", "error", 17, "stdout")
    assert (p.trace_id.hex(), p.span_id.hex(), p.time_ns) == (TRACE, SPAN, T_NS)


def test_json_lines_take_time_level_message_and_keep_other_fields():
    (p,) = records("json", '{"ts": 1709634030.5, "severity": "WARNING", "message": "slow", "user": {"id": 7}, "ms": 12}')
    assert (p.body, p.severity_text, p.severity_number, p.time_ns) == ("slow", "WARNING", 13, 1709634030500000000)
    assert p.attributes == {"user": {"id": 7}, "ms": 12}


def test_json_traceparent_sets_trace_context_and_flags():
    (p,) = records("json", f'{{"msg":"x","traceparent":"00-{TRACE}-{SPAN}-01"}}')
    assert (p.trace_id.hex(), p.span_id.hex(), p.trace_flags) == (TRACE, SPAN, 1)


def test_logfmt_lines():
    (p,) = records("auto", f'time={T} level=info msg="user \\"bob\\" logged in" trace_id={TRACE} path=/login')
    assert (p.body, p.severity_number, p.time_ns) == ('user "bob" logged in', 9, T_NS)
    assert p.trace_id.hex() == TRACE and p.attributes == {"path": "/login"}


def test_plain_lines_detect_severity_and_trace_ids():
    (p,) = records("plain", f"2024-03-05 10:20:30 ERROR payment failed trace_id={TRACE} span_id={SPAN}")
    assert (p.severity_text, p.severity_number) == ("ERROR", 17)
    assert (p.trace_id.hex(), p.span_id.hex(), p.time_ns) == (TRACE, SPAN, 0)
    (q,) = records("plain", f"request done traceparent=00-{TRACE}-{SPAN}-00")
    assert (q.trace_id.hex(), q.span_id.hex(), q.severity_number) == (TRACE, SPAN, 0)


@pytest.mark.parametrize("line, expected", [
    ("no error found here", ("", 0)),
    ("[warn] low disk", ("warn", 13)),
    ("2024-01-01 INFO started", ("INFO", 9)),
    ("<Error> bad", ("Error", 17)),
    ("E: CRITICAL: gone", ("CRITICAL", 21)),
    ("DEBUG: x", ("DEBUG", 5)),
])
def test_plain_severity_detection(line, expected):
    assert detect(line) == expected


@pytest.mark.parametrize("value, ns", [
    (T, T_NS),
    ("2024-03-05T12:20:30.5+02:00", 1709634030500000000),
    ("2024-03-05 10:20:30,250", 1709634030250000000),
    (1709634030, 1709634030000000000),
    (1709634030123, 1709634030123000000),
    (1709634030123456789, 1709634030123456789),
    ("yesterday", 0),
])
def test_times(value, ns):
    assert parse_time(value) == ns


def test_malformed_container_lines_stay_plain_lines():
    (p,) = records("docker", '{"not docker": 1')
    assert p.body == '{"not docker": 1' and p.stream is None
