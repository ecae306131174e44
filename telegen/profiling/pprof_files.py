"""
The profiler's pprof file sink: one gzipped profile.proto per service and window under
<telegen.data_dir>/profiles/, named <service.name>.<window start, UTC YYYYmmddTHHMMSSZ>.pb.gz,
rotated by age and by the directory's total size (oldest first).

Why files: `go tool pprof FILE` is the tool people already know, and the files are there whether
or not an OTLP endpoint is configured.
"""
import os
import re
import time

from telegen.debug.pprof import ProfileBuilder

SUFFIX = ".pb.gz"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def profiles_dir(data_dir):
    return os.path.join(data_dir, "profiles")


def file_name(service_name, window_start):
    """`<service.name>.<YYYYmmddTHHMMSSZ>.pb.gz`; characters unsafe in a file name become '_'."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(window_start))
    return f"{_UNSAFE.sub('_', service_name) or 'unknown_service'}.{stamp}{SUFFIX}"


def cpu_profile(samples, window_start, duration, sample_rate, executable, off_cpu=None):
    """
    A ProfileBuilder of one service's window: samples are (frames, count, labels) with frames
    (function, module) innermost first. Values: sample count and CPU time (count x period); with
    off_cpu (the same shape, nanoseconds blocked instead of a count) a third, off_cpu nanoseconds,
    and those samples carry 0 in the first two.
    """
    period = int(1e9 / sample_rate)
    types = [("samples", "count"), ("cpu", "nanoseconds")] + ([("off_cpu", "nanoseconds")] if off_cpu is not None else [])
    builder = ProfileBuilder(types, period_type=("cpu", "nanoseconds"), period=period, default_sample_type="cpu",
                             time_nanos=int(window_start * 1e9), duration_nanos=int(duration * 1e9),
                             mapping_file=executable)
    pad = [0] if off_cpu is not None else []
    # The same stacks and frames recur across the processes of a service: intern each once.
    stacks, frame_ids = {}, {}

    def location(frame):
        location_id = frame_ids[frame] = builder.location((frame[0], frame[1], 0, 0))
        return location_id

    def locations(frames):
        frames = tuple(frames)
        ids = stacks.get(frames)
        if ids is None:
            known = frame_ids.get
            ids = stacks[frames] = [known(frame) or location(frame) for frame in frames]
        return ids
    for frames, count, labels in samples:
        builder.add_locations(locations(frames), [count, count * period] + pad, labels)
    for frames, nanoseconds, labels in off_cpu or ():
        builder.add_locations(locations(frames), [0, 0, nanoseconds], labels)
    return builder


def write(directory, service_name, window_start, data):
    """Write one profile atomically (a reader never sees half a file); returns its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, file_name(service_name, window_start))
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def rotate(directory, max_age, max_bytes, now=None):
    """Delete profiles older than max_age seconds, then the oldest until the rest fit max_bytes; returns how many."""
    now = time.time() if now is None else now
    try:
        names = [n for n in os.listdir(directory) if n.endswith(SUFFIX)]
    except OSError:
        return 0
    files = []
    for name in names:
        path = os.path.join(directory, name)
        try:
            st = os.stat(path)
        except OSError:
            continue
        files.append((st.st_mtime, st.st_size, path))
    files.sort()
    total = sum(size for _, size, _ in files)
    removed = 0
    for mtime, size, path in files:
        if now - mtime <= max_age and total <= max_bytes:
            break
        try:
            os.remove(path)
        except OSError:
            continue
        total -= size
        removed += 1
    return removed
