"""
The BTF reader on a small hand-built blob (the format of include/uapi/linux/btf.h): members found
through anonymous unions and typedefs, sizes of pointers and arrays, bitfields refused, tp_btf ids
by their btf_trace_ typedef, and precise errors. The real kernel's BTF: tests/integration/test_ebpf_tpbtf.py.
"""
import struct

import pytest

from telegen.ebpf.btf import KIND_STRUCT, BtfError, KernelBtf


class Blob:
    """Types and strings of a BTF blob being built; ids are given in order from 1."""

    def __init__(self):
        self.strings = b"\0"
        self.types = b""
        self.count = 0

    def name(self, text):
        if not text:
            return 0
        off = len(self.strings)
        self.strings += text.encode() + b"\0"
        return off

    def add(self, name, kind, size_or_type, vlen=0, kind_flag=0, extra=b""):
        self.types += struct.pack("<III", self.name(name), (kind_flag << 31) | (kind << 24) | vlen, size_or_type) + extra
        self.count += 1
        return self.count

    def int(self, name, size):
        return self.add(name, 1, size, extra=struct.pack("<I", size * 8))

    def struct(self, name, size, members, kind=4, kind_flag=0):
        extra = b"".join(struct.pack("<III", self.name(m), t, off) for m, t, off in members)
        return self.add(name, kind, size, vlen=len(members), kind_flag=kind_flag, extra=extra)

    def bytes(self):
        header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(self.types), len(self.types), len(self.strings))
        return header + self.types + self.strings


def kernel_like():
    b = Blob()
    u16 = b.int("u16", 2)
    u32 = b.int("u32", 4)
    be16 = b.add("__be16", 8, u16)                                       # typedef
    ptr = b.add("", 2, u32)                                              # u32 *
    arr = b.add("", 3, 0, extra=struct.pack("<III", u32, u32, 4))        # u32[4]
    pair = b.struct("", 8, [("skc_daddr", u32, 0), ("skc_rcv_saddr", u32, 32)])
    addrs = b.struct("", 8, [("skc_addrpair", u32, 0), ("", pair, 0)], kind=5)        # anonymous union
    common = b.struct("sock_common", 32, [("", addrs, 0), ("skc_dport", be16, 96), ("skc_v6", arr, 128)])
    b.struct("sock", 64, [("__sk_common", common, 0), ("sk_ptr", ptr, 256),
                          ("sk_bits", u32, (4 << 24) | 320)], kind_flag=1)
    proto = b.add("", 13, 0)
    b.add("btf_trace_sock_send_length", 8, b.add("", 2, proto))
    return KernelBtf(b.bytes())


def test_members_through_anonymous_unions_and_typedefs_with_their_sizes():
    btf = kernel_like()
    assert btf.member("sock", "__sk_common.skc_rcv_saddr") == (4, 4)
    assert btf.member("sock", "__sk_common.skc_daddr") == (0, 4)
    assert btf.member("sock", "__sk_common.skc_dport") == (12, 2)
    assert btf.member("sock", "__sk_common.skc_v6") == (16, 16)
    assert btf.member("sock", "sk_ptr") == (32, 8)


def test_tracepoint_ids_are_their_btf_trace_typedefs():
    btf = kernel_like()
    assert btf.tracepoint_id("sock_send_length") == btf.type_id("btf_trace_sock_send_length", 8)
    assert btf.type_id("sock", KIND_STRUCT) == 9


def test_offset_flags_give_each_flag_its_members_offset():
    btf = kernel_like()
    fields = {"OFF_DPORT": ("sock", "__sk_common.skc_dport"), "OFF_PTR": ("sock", "sk_ptr")}
    assert btf.offset_flags(fields) == ["-DOFF_DPORT=12", "-DOFF_PTR=32"]
    with pytest.raises(BtfError, match="struct sock has no nope"):
        btf.offset_flags({"OFF_NOPE": ("sock", "nope")})


def test_missing_types_members_and_bitfields_are_named():
    btf = kernel_like()
    with pytest.raises(BtfError, match="kernel BTF has no btf_trace_nope"):
        btf.tracepoint_id("nope")
    with pytest.raises(BtfError, match="struct sock has no __sk_common.skc_num"):
        btf.member("sock", "__sk_common.skc_num")
    with pytest.raises(BtfError, match="sock.sk_bits is a bitfield"):
        btf.member("sock", "sk_bits")
    with pytest.raises(BtfError, match="not BTF"):
        KernelBtf(b"\0" * 32)


def test_an_unreadable_file_is_named(tmp_path):
    with pytest.raises(BtfError, match="kernel BTF unreadable: .*nothing"):
        KernelBtf.load(str(tmp_path / "nothing"))
