"""
tp_btf programs through telegen.ebpf.tpbtf on the real kernel: a BCC-compiled function loads as
BPF_PROG_TYPE_TRACING with attach type BPF_TRACE_RAW_TP, fires at its tracepoint (it reads a
`struct sock` field at the offset the running kernel's BTF gives), shows as "tracing" with its
kernel id, and is released by bpf.cleanup(); a refusal comes back with the verifier's reason.
"""
import os
import socket

import pytest

from telegen.ebpf import loader, tpbtf
from telegen.ebpf.btf import BtfError, KernelBtf

pytestmark = [pytest.mark.ebpf, pytest.mark.integration]

COUNT_SENDS = r"""
BPF_ARRAY(sent, u64, 1);
int tp_btf__sock_send_length(u64 *ctx)
{
    void *sk = (void *)ctx[0];
    int ret = (int)ctx[1];
    u16 port = *(u16 *)((char *)sk + OFF_SK_NUM);        /* the local port, host order */
    int zero = 0;
    u64 *n = sent.lookup(&zero);
    if (n && port == WANTED_PORT && ret > 0)
        __sync_fetch_and_add(n, ret);
    return 0;
}
"""

OUT_OF_BOUNDS = r"""
int tp_btf__sock_send_length(u64 *ctx)
{
    return *(u32 *)((char *)ctx[0] + (1 << 20));           /* far beyond struct sock */
}
"""


@pytest.fixture(scope="module")
def btf():
    return KernelBtf.load()


def test_a_bcc_function_loads_as_tp_btf_and_fires_at_its_tracepoint(btf):
    from bcc import BPF

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    server, _ = listener.accept()
    bpf = BPF(text=COUNT_SENDS.encode(), cflags=[f"-DOFF_SK_NUM={btf.member('sock', '__sk_common.skc_num')[0]}",
                                        f"-DWANTED_PORT={port}"])
    try:
        tpbtf.load_and_attach(bpf, "tp_btf__sock_send_length", "sock_send_length", btf)
        server.sendall(b"x" * 1000)          # the accepted socket's local port is the listener's
        server.sendall(b"y" * 234)
        assert bpf[b"sent"][0].value == 1234
        [program] = loader.describe_programs(bpf)
        assert (program["name"], program["type"], program["attached"], program["tracepoint"]) == (
            "tp_btf__sock_send_length", "tracing", True, "tp_btf/sock_send_length")
        info = loader.fdinfo(bpf.funcs[b"tp_btf__sock_send_length"].fd)
        assert int(info["prog_type"]) == tpbtf.BPF_PROG_TYPE_TRACING and program["id"] == int(info["prog_id"])
        link_fd = bpf.raw_tracepoint_fds[b"tp_btf/sock_send_length"]
    finally:
        bpf.cleanup()
        for s in (server, client, listener):
            s.close()
    with pytest.raises(OSError):
        os.fstat(link_fd)                     # cleanup() closed the attachment


def test_a_verifier_refusal_says_why(btf):
    from bcc import BPF

    bpf = BPF(text=OUT_OF_BOUNDS.encode())
    try:
        with pytest.raises(tpbtf.TpBtfError) as info:
            tpbtf.load_and_attach(bpf, "tp_btf__sock_send_length", "sock_send_length", btf)
        message = str(info.value)
        assert message.startswith("tp_btf tp_btf__sock_send_length: BPF_PROG_LOAD: Permission denied: ")
        assert "access beyond struct sock" in message, message
        assert b"tp_btf__sock_send_length" not in bpf.funcs
    finally:
        bpf.cleanup()


def test_an_unknown_tracepoint_is_named(btf):
    with pytest.raises(BtfError, match="kernel BTF has no btf_trace_no_such_event"):
        btf.tracepoint_id("no_such_event")
