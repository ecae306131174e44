"""The hand-written LogRecord encoding decodes to the record the protobuf classes would build."""
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from telegen.logs.parsers import Parsed
from telegen.logs.records import encode, file_attributes
from tests.support.otlp_receiver import attrs_dict


def test_every_field_round_trips():
    parsed = Parsed("héllo " * 40, time_ns=1709634030123456789, severity_text="WARN", severity_number=13,
                    stream="stderr", attributes={"n": -3, "ok": True, "ratio": 0.5, "who": "bob", "none": None, "user": {"id": 7}},
                    trace_id=bytes(range(16)), span_id=bytes(range(8)), trace_flags=1)
    record = LogRecord.FromString(encode(parsed, file_attributes("/var/log/app.log"), 1709634031000000000))
    assert record.body.string_value == "héllo " * 40
    assert (record.time_unix_nano, record.observed_time_unix_nano) == (1709634030123456789, 1709634031000000000)
    assert (record.severity_text, record.severity_number, record.flags) == ("WARN", 13, 1)
    assert (record.trace_id, record.span_id) == (bytes(range(16)), bytes(range(8)))
    assert attrs_dict(record.attributes) == {"log.file.path": "/var/log/app.log", "log.file.name": "app.log",
                                             "log.iostream": "stderr", "n": -3, "ok": True, "ratio": 0.5, "who": "bob",
                                             "user": "{\"id\":7}"}


def test_a_bare_line_has_only_body_file_attributes_and_observed_time():
    record = LogRecord.FromString(encode(Parsed(""), file_attributes("/x.log"), 5))
    assert record == LogRecord(observed_time_unix_nano=5, body={"string_value": ""},
                               attributes=[{"key": "log.file.path", "value": {"string_value": "/x.log"}},
                                           {"key": "log.file.name", "value": {"string_value": "x.log"}}])


LINES = [
    "2026-12-07 10:00:00 INFO served /api/items in 3ms",
    "WARNING: disk 91% full",
    "plain words, no level",
    "ERROR",
    "XERROR glued to a word, then INFO",
    "ERRORS are not a level word, nor INFO_X, but WARN is",
    "x" * 300 + " ERROR late in a long line",
    "[error] bracketed lower case",
    "level=info msg=hi",
    '{"msg": "json"}',
    "2024-03-05T10:20:30Z stdout F cri line",
    "trace_id=4bf92f3577b34da6a3ce929d0e0e4736 found",
    "caf\u00e9 ERROR non-ascii",
    "",
]


def test_the_fast_plain_path_writes_what_the_general_one_writes():
    """Lines the fast path takes encode to the same bytes as parsing them; the others it refuses."""
    from telegen.logs import fastplain
    from telegen.logs.parsers import auto, plain

    attrs = file_attributes("/var/log/app.log")
    for is_auto, parse in ((False, plain), (True, auto)):
        fast = fastplain.encoder(is_auto)
        taken = 0
        for line, record in zip(LINES, fast([line.encode() for line in LINES], attrs, 7)):
            assert fast([line.encode()], attrs, 7) == [record]
            if record is not None:
                taken += 1
                assert record == encode(parse(line), attrs, 7), line
        assert taken >= 4
    assert fastplain.encoder(True)([b'{"msg": "json"}'], attrs, 7) == [None]
    assert fastplain.encoder(False)([b"trace_id=4bf92f3577b34da6a3ce929d0e0e4736 found"], attrs, 7) == [None]
