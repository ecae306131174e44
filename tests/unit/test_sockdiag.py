"""
Listening sockets from sock_diag: against the real kernel (a netlink dump of one's own network
namespace needs no privileges), agreement with /proc/net/tcp, and the netlink framing.
"""
import errno
import os
import socket

import pytest

from telegen.discovery import procfs, sockdiag


@pytest.fixture
def sockets():
    opened = []

    def make(family, address, listen=True):
        s = socket.socket(family, socket.SOCK_STREAM)
        opened.append(s)
        s.bind((address, 0))
        if listen:
            s.listen()
        return s

    yield make
    for s in opened:
        s.close()


def inode(s):
    return os.fstat(s.fileno()).st_ino


def test_listening_ipv4_and_ipv6_sockets_are_found_by_inode_with_their_port(sockets):
    v4 = sockets(socket.AF_INET, "127.0.0.1")
    v6 = sockets(socket.AF_INET6, "::1")
    bound_only = sockets(socket.AF_INET, "127.0.0.1", listen=False)
    found = sockdiag.listening_tcp()
    assert found[inode(v4)] == v4.getsockname()[1]
    assert found[inode(v6)] == v6.getsockname()[1]
    assert inode(bound_only) not in found


def test_established_connections_are_not_listeners(sockets):
    server = sockets(socket.AF_INET, "127.0.0.1")
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    try:
        found = sockdiag.listening_tcp()
        assert inode(server) in found
        assert inode(client) not in found and inode(accepted) not in found
    finally:
        client.close()
        accepted.close()


def test_the_same_answer_as_proc_net_tcp(sockets):
    """(Only our own sockets are compared: other processes on this machine open and close theirs meanwhile.)"""
    mine = {inode(s): s.getsockname()[1] for s in (sockets(socket.AF_INET, "127.0.0.1"), sockets(socket.AF_INET6, "::1"))}
    assert mine.items() <= procfs.listening_ports().items()
    assert mine.items() <= procfs.listening_inodes().items()


def test_without_sock_diag_proc_net_tcp_answers(sockets, monkeypatch):
    def unavailable():
        raise OSError(errno.ENOENT, "sock_diag: No such file or directory")

    monkeypatch.setattr(sockdiag, "listening_tcp", unavailable)
    s = sockets(socket.AF_INET, "127.0.0.1")
    assert procfs.listening_ports()[inode(s)] == s.getsockname()[1]


def message(kind, payload):
    return sockdiag._NLMSG.pack(sockdiag._NLMSG.size + len(payload), kind, 0, 1, 0) + payload


def diag(state, port, ino):
    return message(sockdiag.SOCK_DIAG_BY_FAMILY,
                   sockdiag._MESSAGE.pack(socket.AF_INET, state, 0, 0, socket.htons(port), 0, 0, 0, 0, 0, ino))


def test_parse_keeps_listeners_and_stops_at_done():
    out = {}
    assert sockdiag.parse(diag(sockdiag.TCP_LISTEN, 8080, 11) + diag(1, 40000, 12), out) is False
    assert out == {11: 8080}
    assert sockdiag.parse(message(sockdiag.NLMSG_DONE, b"\0" * 4), out) is True


def test_a_netlink_error_is_raised_with_its_errno():
    with pytest.raises(OSError) as raised:
        sockdiag.parse(message(sockdiag.NLMSG_ERROR, sockdiag._ERRNO.pack(-errno.ENOENT) + b"\0" * 16), {})
    assert raised.value.errno == errno.ENOENT and "sock_diag" in str(raised.value)


def test_a_truncated_message_is_an_error_not_a_loop():
    with pytest.raises(OSError, match="malformed"):
        sockdiag.parse(sockdiag._NLMSG.pack(4, sockdiag.SOCK_DIAG_BY_FAMILY, 0, 1, 0), {})
