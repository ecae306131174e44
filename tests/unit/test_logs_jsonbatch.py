"""JSON lines encoded a batch at a time, by columns, give the bytes the line-by-line path gives."""
import itertools

from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from telegen.logs import jsonbatch
from telegen.logs.parsers import json_line
from telegen.logs.records import encode, file_attributes
from tests.support.otlp_receiver import attrs_dict

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"

LINES = [
    # one application's lines: same keys, varying values (the column path)
    '{"time":"2026-12-07T10:00:00.000000001Z","level":"info","msg":"request 1 served","seq":1,"sent":1.5,"ok":true}',
    '{"time":"2026-12-07T10:00:01.123456789Z","level":"ERROR","msg":"caf\\u00e9 \\ud83d\\ude00","seq":16384,"sent":-2.0,"ok":false}',
    '{"time":"2026-12-07T23:59:59.999999999Z","level":"warn","msg":"' + "x" * 5000 + '","seq":268435456,"sent":0.0,"ok":null}',
    '{"time":"2026-12-07T10:00:00.000000001Z","level":"Trace","msg":"","seq":-3,"sent":1e300,"ok":[1,"a"]}',
    # other shapes and types, each a run of its own
    '{"ts":1709634030.5,"severity":"WARNING","message":"slow","user":{"id":7},"ms":12}',
    '{"ts":1709634030,"severity":"WARNING","message":"slow","user":{"id":7},"ms":"12"}',
    '{"ts":"yesterday","severity":"WARNING","message":"slow","user":{"id":7},"ms":12}',
    '{"ts":"2026-12-07T10:00:00+02:00","severity":5,"message":42,"ms":12.5}',
    '{"time":"2026-13-45T99:00:00.000000001Z","level":"info","msg":"not a date"}',
    '{"time":"1970-01-01T00:00:00.000000000Z","level":"info","msg":"the epoch"}',
    '{"time":"2026-12-07T10:00:0\u0663.000000001Z","level":"info","msg":"an Arabic-Indic digit"}',
    '{"@timestamp":"2026-12-07T10:00:00.5Z","level":null,"msg":null}',
    '{"msg":"lone \\ud800 surrogate","path":"\\udfff"}',
    f'{{"msg":"traced","trace_id":"{TRACE}","span_id":"{SPAN}"}}',
    f'{{"msg":"traced","trace_id":"{TRACE}","span_id":"short"}}',
    f'{{"msg":"x","traceparent":"00-{TRACE}-{SPAN}-01"}}',
    f'{{"msg":"x","trace_id":"{TRACE}","trace_flags":1}}',
    '{"no_role_at_all":1}',
    '{}',
    '{"a":1} ',
    '{"a":1} {"b":2}',
    '[1,2]',
    '"just a string"',
    'not json at all ERROR',
    '',
    '{"a":',
]


def general(lines, attrs, observed):
    return [encode(json_line(text), attrs, observed) for text in lines]


def test_every_line_gives_the_bytes_of_the_line_by_line_path():
    attrs = file_attributes("/var/log/app.log")
    assert jsonbatch.encode(LINES, attrs, 7) == general(LINES, attrs, 7)
    for line in LINES:
        assert jsonbatch.encode([line], attrs, 7) == general([line], attrs, 7), line


def test_runs_of_one_shape_between_others_keep_their_order():
    """Batches mixing shapes (a run of one key tuple, then another, then bad lines) stay in order."""
    attrs = file_attributes("/x.log")
    batch = list(itertools.chain.from_iterable(itertools.repeat(LINES[:4], 3))) + LINES + LINES[:4] * 2
    assert jsonbatch.encode(batch, attrs, 9) == general(batch, attrs, 9)


def test_a_column_record_decodes_to_the_fields_of_its_line():
    attrs = file_attributes("/var/log/app.log")
    (encoded,) = jsonbatch.encode([LINES[1]], attrs, 5)
    record = LogRecord.FromString(encoded)
    assert (record.time_unix_nano, record.observed_time_unix_nano) == (1796637601123456789, 5)
    assert (record.severity_text, record.severity_number, record.body.string_value) == ("ERROR", 17, "café 😀")
    assert attrs_dict(record.attributes) == {"log.file.path": "/var/log/app.log", "log.file.name": "app.log",
                                             "seq": 16384, "sent": -2.0, "ok": False}


def test_lines_of_one_shape_take_the_column_path(monkeypatch):
    """The usual lines never reach the line-by-line parser (which is what made JSON slow)."""
    expected = general(LINES[:4], file_attributes("/x.log"), 3)

    def refuse(text):
        raise AssertionError(f"line by line: {text}")

    monkeypatch.setattr(jsonbatch, "json_line", refuse)
    assert jsonbatch.encode(LINES[:4] * 50, file_attributes("/x.log"), 3) == expected * 50
