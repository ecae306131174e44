"""
BPF map operations on a bare map fd, by the bpf(2) system call through ctypes.

Why not BCC here: the profiler's worker process (telegen.profiling.worker) drains maps the agent
created and handed it as file descriptors. It needs a handful of commands (lookup, update,
delete, next key, lookup-and-delete in batches, map info), and importing BCC would load
libbcc/LLVM into a process that compiles nothing.
"""
import ctypes
import errno
import os
import platform

# enum bpf_cmd (uapi/linux/bpf.h)
BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM, BPF_MAP_GET_NEXT_KEY = 1, 2, 3, 4
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_AND_DELETE_BATCH = 25
_SYS_BPF = {"x86_64": 321, "aarch64": 280}
POSSIBLE_CPUS = "/sys/devices/system/cpu/possible"


class _ElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _BatchAttr(ctypes.Structure):
    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64), ("keys", ctypes.c_uint64),
                ("values", ctypes.c_uint64), ("count", ctypes.c_uint32), ("map_fd", ctypes.c_uint32),
                ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


class _MapInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("name", ctypes.c_char * 16)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd, attr):
    res = _libc.syscall(_SYS_BPF[platform.machine()], cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return res


def possible_cpus(path=POSSIBLE_CPUS):
    """How many CPUs per-CPU maps hold a slot for (the kernel's possible mask, not the online one)."""
    from telegen.profiling.sampler import parse_cpu_list
    with open(path, encoding="ascii") as f:
        return max(parse_cpu_list(f.read())) + 1


class BpfMap:
    """One map by fd: key and value sizes come from the kernel (BPF_OBJ_GET_INFO_BY_FD)."""

    def __init__(self, fd, per_cpu=False):
        self.fd = fd
        info = _MapInfo()
        _bpf(BPF_OBJ_GET_INFO_BY_FD, _InfoAttr(fd, ctypes.sizeof(info), ctypes.addressof(info)))
        self.key_size, self.max_entries = info.key_size, info.max_entries
        # A per-CPU map's value is one 8-byte-aligned slot per possible CPU.
        self.value_size = (info.value_size + 7 & ~7) * possible_cpus() if per_cpu else info.value_size
        self._key = ctypes.create_string_buffer(self.key_size)
        self._next = ctypes.create_string_buffer(self.key_size)
        self._value = ctypes.create_string_buffer(self.value_size)

    def lookup(self, key):
        """The value bytes of key, or None."""
        self._key.raw = key
        try:
            _bpf(BPF_MAP_LOOKUP_ELEM, _ElemAttr(self.fd, 0, ctypes.addressof(self._key), ctypes.addressof(self._value)))
        except FileNotFoundError:
            return None
        return self._value.raw

    def update(self, key, value):
        self._key.raw = key
        self._value.raw = value
        _bpf(BPF_MAP_UPDATE_ELEM, _ElemAttr(self.fd, 0, ctypes.addressof(self._key), ctypes.addressof(self._value)))

    def delete(self, key):
        """True if key was there."""
        self._key.raw = key
        try:
            _bpf(BPF_MAP_DELETE_ELEM, _ElemAttr(self.fd, 0, ctypes.addressof(self._key), 0))
        except FileNotFoundError:
            return False
        return True

    def keys(self):
        """Every key now in the map (a snapshot: BPF_MAP_GET_NEXT_KEY from no key, then from each)."""
        out = []
        attr = _ElemAttr(self.fd, 0, 0, ctypes.addressof(self._next))
        while True:
            try:
                _bpf(BPF_MAP_GET_NEXT_KEY, attr)
            except FileNotFoundError:
                return out
            out.append(self._next.raw)
            self._key.raw = self._next.raw
            attr.key = ctypes.addressof(self._key)

    def lookup_and_delete_all(self):
        """
        (keys bytes, values bytes, count): every entry, each removed as it is read, in batches
        (BPF_MAP_LOOKUP_AND_DELETE_BATCH: a few syscalls for thousands of entries).
        """
        room = self.max_entries
        keys = ctypes.create_string_buffer(self.key_size * room)
        values = ctypes.create_string_buffer(self.value_size * room)
        in_batch, out_batch = ctypes.c_uint64(0), ctypes.c_uint64(0)
        total, first = 0, True
        while total < room:
            attr = _BatchAttr(0 if first else ctypes.addressof(in_batch), ctypes.addressof(out_batch),
                              ctypes.addressof(keys) + self.key_size * total,
                              ctypes.addressof(values) + self.value_size * total, room - total, self.fd, 0, 0)
            try:
                _bpf(BPF_MAP_LOOKUP_AND_DELETE_BATCH, attr)
            except OSError as e:
                total += attr.count       # the kernel reports what it copied even when it stops
                if e.errno == errno.ENOENT:
                    break
                raise
            total += attr.count
            in_batch.value, first = out_batch.value, False
        return keys.raw[:self.key_size * total], values.raw[:self.value_size * total], total
