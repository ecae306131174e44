"""
Read what the export file sink wrote: <data_dir>/otlp/<signal>.jsonl plus rotated
<signal>.jsonl.1 .. .N (oldest has the highest number), one OTLP/JSON export request per line.
"""
import glob
import os

from telegen.export.otlpjson import decode
from tests.support.otlp_receiver import SIGNALS, attrs_dict


def sink_files(data_dir, signal):
    """The sink files of `signal`, oldest first."""
    base = os.path.join(str(data_dir), "otlp", f"{signal}.jsonl")
    rotated = sorted(glob.glob(base + ".*"), key=lambda p: int(p.rsplit(".", 1)[1]), reverse=True)
    return rotated + ([base] if os.path.exists(base) else [])


def read_requests(data_dir, signal):
    """Every export request of `signal` in write order, decoded to the protobuf request type (complete lines only)."""
    cls = SIGNALS[signal][0]
    out = []
    for path in sink_files(data_dir, signal):
        with open(path, encoding="utf-8") as f:
            # A line without its newline is still being written by the agent (tests read while it runs).
            out.extend(decode(line, cls) for line in f if line.endswith("\n") and line.strip())
    return out


def read_metrics(data_dir):
    """Flattened [(resource_attrs dict, Metric)] from the metrics sink files."""
    return [(attrs_dict(rm.resource.attributes), metric)
            for req in read_requests(data_dir, "metrics")
            for rm in req.resource_metrics for sm in rm.scope_metrics for metric in sm.metrics]


def read_spans(data_dir):
    """Flattened [(resource_attrs dict, Span)] from the traces sink files."""
    return [(attrs_dict(rs.resource.attributes), span)
            for req in read_requests(data_dir, "traces")
            for rs in req.resource_spans for ss in rs.scope_spans for span in ss.spans]


def read_logs(data_dir):
    """Flattened [(resource_attrs dict, LogRecord)] from the logs sink files."""
    return [(attrs_dict(rl.resource.attributes), record)
            for req in read_requests(data_dir, "logs")
            for rl in req.resource_logs for sl in rl.scope_logs for record in sl.log_records]
