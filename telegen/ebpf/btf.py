# -*- test-case-name: tests.unit.test_ebpf_btf -*-
"""
Kernel struct layouts from the running kernel's BTF (/sys/kernel/btf/vmlinux).

BCC compiles against the kernel headers Debian ships, which need not match the running kernel
(on the 6.18 test machines they are 6.1's), so a BPF program must never take a kernel struct's
layout from them. The socket-level capture (bpf/http_sock.c) reads a few fields of `struct sock`,
`task_struct` and `pt_regs`; their offsets come from here and reach the C source as -D flags,
and tp_btf programs need the BTF id of their tracepoint's `btf_trace_<name>` typedef.

A small reader of the BTF format (include/uapi/linux/btf.h) rather than libbpf through ctypes:
it needs only names, kinds and members, and the kernel's type section is read once.
"""
import array
import struct

VMLINUX = "/sys/kernel/btf/vmlinux"

_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")
_INFO = struct.Struct("<I")
_MEMBER = struct.Struct("<III")
(KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_FWD, KIND_TYPEDEF, KIND_VOLATILE,
 KIND_CONST, KIND_RESTRICT, KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC, KIND_FLOAT, KIND_DECL_TAG,
 KIND_TYPE_TAG, KIND_ENUM64) = range(1, 20)
_MODIFIERS = frozenset((KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG))
# Bytes that follow a type's common part: fixed per kind, plus vlen times a per-kind size.
_EXTRA = {KIND_INT: (4, 0), KIND_ARRAY: (12, 0), KIND_STRUCT: (0, 12), KIND_UNION: (0, 12), KIND_ENUM: (0, 8),
          KIND_FUNC_PROTO: (0, 8), KIND_VAR: (4, 0), KIND_DATASEC: (0, 12), KIND_DECL_TAG: (4, 0),
          KIND_ENUM64: (0, 12)}


class BtfError(Exception):
    """The BTF could not be read, or lacks a type or member the caller needs; str() says which."""


class _Type:
    __slots__ = ("name_off", "kind", "kind_flag", "size_or_type", "vlen", "extra_at")

    def __init__(self, data, pos):
        self.name_off, info, self.size_or_type = _TYPE.unpack_from(data, pos)
        self.kind, self.kind_flag, self.vlen = (info >> 24) & 0x1F, info >> 31, info & 0xFFFF
        self.extra_at = pos + _TYPE.size


class KernelBtf:
    """
    The types of one BTF blob (type id 0 is void; ids start at 1). Only where each type starts is
    kept (4 bytes per type; the kernel has ~125,000): a type is decoded when asked for, so reading
    the layouts costs the blob and an array, not an object per type.
    """

    def __init__(self, data):
        if len(data) < _HEADER.size:
            raise BtfError("BTF too short")
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise BtfError(f"not BTF (magic {magic:#x})")
        self._data = data
        self._strings = hdr_len + str_off
        self._starts = array.array("I", [0])
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        while pos < end:
            info = _INFO.unpack_from(data, pos + 4)[0]
            fixed, per = _EXTRA.get((info >> 24) & 0x1F, (0, 0))
            self._starts.append(pos)
            pos += _TYPE.size + fixed + per * (info & 0xFFFF)

    def _type(self, type_id):
        return _Type(self._data, self._starts[type_id])

    @classmethod
    def load(cls, path=VMLINUX):
        try:
            with open(path, "rb") as f:
                return cls(f.read())
        except OSError as e:
            raise BtfError(f"kernel BTF unreadable: {path}: {e.strerror}") from e

    def _string(self, off):
        start = self._strings + off
        return self._data[start:self._data.index(b"\0", start)].decode("ascii", "replace")

    def type_id(self, name, kind):
        """The id of the type called `name` of `kind` (KIND_*); BtfError when there is none."""
        at = self._data.find(b"\0" + name.encode() + b"\0", self._strings)
        if at >= 0:
            name_off = at + 1 - self._strings          # strings are deduplicated: one offset per name
            for type_id in range(1, len(self._starts)):
                t = self._type(type_id)
                if t.name_off == name_off and t.kind == kind:
                    return type_id
        raise BtfError(f"kernel BTF has no {name}")

    def tracepoint_id(self, tracepoint):
        """What BPF_PROG_LOAD's attach_btf_id names for tp_btf/<tracepoint>: its btf_trace_<name> typedef."""
        return self.type_id("btf_trace_" + tracepoint, KIND_TYPEDEF)

    def _size(self, type_id):
        t = self._type(type_id)
        while t.kind in _MODIFIERS:
            t = self._type(t.size_or_type)
        if t.kind == KIND_PTR:
            return 8
        if t.kind == KIND_ARRAY:
            elem, _index, n = struct.unpack_from("<III", self._data, t.extra_at)
            return self._size(elem) * n
        return t.size_or_type

    def _members(self, type_id):
        """(name, type id, bit offset, bitfield size) of a struct or union's members."""
        t = self._type(type_id)
        while t.kind in _MODIFIERS:
            type_id = t.size_or_type
            t = self._type(type_id)
        if t.kind not in (KIND_STRUCT, KIND_UNION):
            return
        for i in range(t.vlen):
            name_off, mtype, offset = _MEMBER.unpack_from(self._data, t.extra_at + i * _MEMBER.size)
            bits = offset >> 24 if t.kind_flag else 0
            yield (self._string(name_off) if name_off else "", mtype, offset & 0xFFFFFF if t.kind_flag else offset, bits)

    def _find(self, type_id, name):
        """(bit offset, type id, bitfield bits) of member `name`, looking into anonymous members too."""
        for mname, mtype, bit_offset, bits in self._members(type_id):
            if mname == name:
                return bit_offset, mtype, bits
            if not mname:
                inner = self._find(mtype, name)
                if inner is not None:
                    return bit_offset + inner[0], inner[1], inner[2]
        return None

    def member(self, struct_name, path):
        """
        (byte offset, byte size) of `path` ("__sk_common.skc_family") in struct `struct_name`.
        BtfError for a missing member or a bitfield (a plain load cannot read one).
        """
        type_id = self.type_id(struct_name, KIND_STRUCT)
        offset = 0
        for name in path.split("."):
            found = self._find(type_id, name)
            if found is None:
                raise BtfError(f"kernel BTF: struct {struct_name} has no {path}")
            bit_offset, type_id, bits = found
            if bits or bit_offset % 8:
                raise BtfError(f"kernel BTF: {struct_name}.{path} is a bitfield")
            offset += bit_offset // 8
        return offset, self._size(type_id)

    def offset_flags(self, fields):
        """
        The -D flags that give a BPF program the running kernel's offsets: fields maps each flag
        name to (struct, member path). BtfError when the kernel lacks one.
        """
        return [f"-D{flag}={self.member(struct_name, path)[0]}" for flag, (struct_name, path) in fields.items()]
