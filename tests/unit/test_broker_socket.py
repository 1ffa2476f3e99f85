"""The broker's socket as paho sees it, over a real socket pair."""

from __future__ import annotations

import socket
import ssl

import pytest

from gatewayd.cloud.puback import BrokerSocket
from tests.mqtt_broker import make_tls

PUBACK = b"\x40\x02\x00\x01"


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    yield ours, theirs
    ours.close()
    theirs.close()


def drain(sock: socket.socket) -> bytes:
    out = bytearray()
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


def test_small_reads_are_served_from_one_large_read(pair):
    ours, theirs = pair
    wrapped = BrokerSocket(ours)
    theirs.sendall(PUBACK * 3)
    assert wrapped.recv(1) == b"\x40"
    assert wrapped.pending() == 11  # the rest came with it, for the reader to ask again
    assert wrapped.recv(1) == b"\x02"
    assert wrapped.recv(2) == b"\x00\x01"
    assert wrapped.recv(100) == PUBACK * 2
    assert wrapped.pending() == 0
    with pytest.raises(BlockingIOError):
        wrapped.recv(1)  # nothing left anywhere: paho's EAGAIN
    theirs.close()
    assert wrapped.recv(1) == b""  # end of stream is still end of stream


def test_sends_while_gathering_leave_in_one_burst_in_order(pair):
    ours, theirs = pair
    wrapped = BrokerSocket(ours)
    wrapped.gather()
    assert wrapped.send(b"one,") == 4
    assert wrapped.send(b"two,") == 4
    assert drain(theirs) == b""  # held until the flush
    assert wrapped.flush()
    assert wrapped.send(b"three") == 5  # not gathering: straight out
    assert drain(theirs) == b"one,two,three"


def test_a_full_socket_keeps_the_rest_and_later_sends_behind_it(pair):
    ours, theirs = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    wrapped = BrokerSocket(ours)
    burst = bytes(range(256)) * 4096  # 1 MiB: more than the socket takes at once
    wrapped.gather()
    wrapped.send(burst)
    assert not wrapped.flush()
    assert wrapped.send(b"tail") == 4  # queued behind the unsent part, not ahead of it
    received = bytearray()
    while not wrapped.flush():
        received += drain(theirs)
    received += drain(theirs)
    assert bytes(received) == burst + b"tail"


def test_close_sends_what_was_gathered_first(pair):
    ours, theirs = pair
    wrapped = BrokerSocket(ours)
    wrapped.gather()
    wrapped.send(b"\xe0\x00")  # DISCONNECT, then paho closes the socket at once
    wrapped.close()
    assert drain(theirs) == b"\xe0\x00"
    assert wrapped.fileno() == -1  # everything else is the socket's own


def test_a_broken_connection_surfaces_at_the_flush(pair):
    ours, theirs = pair
    wrapped = BrokerSocket(ours)
    theirs.close()
    wrapped.gather()
    wrapped.send(b"x" * 100)
    with pytest.raises(BrokenPipeError):
        wrapped.flush()


def ours(*mids: int):
    """A settle hook that claims the given packet identifiers; records what it settled."""
    settled: list[tuple[int, int]] = []

    def settle(mid: int, code: int) -> bool:
        if mid in mids:
            settled.append((mid, code))
            return True
        return False

    return settle, settled


def test_pubacks_of_the_seam_never_reach_paho(pair):
    sock, theirs = pair
    settle, settled = ours(1, 2)
    wrapped = BrokerSocket(sock, settle)
    theirs.sendall(PUBACK + b"\x40\x03\x00\x02\x87")
    with pytest.raises(BlockingIOError):
        wrapped.recv(1)  # all of it was the seam's: nothing for paho
    assert settled == [(1, 0), (2, 0x87)]
    theirs.sendall(b"\x40\x02\x01\xf4" + b"\xd0\x00")  # paho's PUBACK, a PINGRESP
    assert wrapped.recv(100) == b"\x40\x02\x01\xf4\xd0\x00"


def test_packets_split_across_reads_reach_paho_in_order(pair):
    sock, theirs = pair
    settle, settled = ours(1)
    wrapped = BrokerSocket(sock, settle)
    theirs.sendall(b"\x90")  # the type byte of a SUBACK, not yet its length
    with pytest.raises(BlockingIOError):
        wrapped.recv(1)
    theirs.sendall(b"\x03\x00\x05")
    assert wrapped.recv(100) == b"\x90\x03\x00\x05"  # passes on as it comes
    theirs.sendall(b"\x01" + PUBACK[:3])
    assert wrapped.recv(100) == b"\x01"
    theirs.sendall(PUBACK[3:])
    with pytest.raises(BlockingIOError):
        wrapped.recv(1)  # the PUBACK, once whole, was the seam's
    assert settled == [(1, 0)]


def test_a_send_the_socket_cannot_take_whole_is_kept_and_the_owner_told(pair):
    sock, theirs = pair
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    stalls: list[bool] = []
    wrapped = BrokerSocket(sock, stalled=lambda: stalls.append(True))
    burst = bytes(range(256)) * 4096
    assert wrapped.send(burst) == len(burst)  # paho never holds part of a packet
    assert stalls == [True]
    wrapped.queue(b"ours")  # a packet of the seam's goes behind it, never inside it
    received = bytearray()
    while not wrapped.flush():
        received += drain(theirs)
    received += drain(theirs)
    assert bytes(received) == burst + b"ours"


def _tls_pair(tmp_path) -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
    """A TLS connection over a socket pair, both ends non-blocking, handshake done."""
    files = make_tls(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files.server_cert, files.server_key)
    client_ctx = ssl.create_default_context(cafile=str(files.ca))
    a, b = socket.socketpair()
    for end in (a, b):
        end.setblocking(False)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client = client_ctx.wrap_socket(a, server_hostname="localhost", do_handshake_on_connect=False)
    server = server_ctx.wrap_socket(b, server_side=True, do_handshake_on_connect=False)
    pending = [client, server]
    while pending:
        pending = [end for end in pending if not _handshake_step(end)]
    return client, server


def _handshake_step(end: ssl.SSLSocket) -> bool:
    """One try at the handshake; whether it is done."""
    try:
        end.do_handshake()
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return False
    return True


def test_a_full_tls_socket_means_later_not_a_broken_link(tmp_path):
    client, server = _tls_pair(tmp_path)
    try:
        wrapped = BrokerSocket(client)
        burst = bytes(range(256)) * 16384  # 4 MiB of records
        wrapped.gather()
        wrapped.send(burst)
        assert not wrapped.flush()  # TLS says "want write": the rest waits, nothing raised
        received = bytearray()
        while len(received) < len(burst):
            wrapped.flush()
            try:
                received += server.recv(1 << 16)
            except ssl.SSLWantReadError:
                continue
        assert wrapped.flush()
        assert bytes(received) == burst
    finally:
        client.close()
        server.close()
