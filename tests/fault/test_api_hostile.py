"""The local API under hostile clients, on the real daemon over real sockets.

Bytes that are not UTF-8 in the token headers, bodies nested 200,000 deep, 5,000-digit
integers: each is a 4xx naming the field, never a 500, and the daemon keeps serving.
Idle and half-sent connections are closed within `api.header_timeout_s` /
`api.keepalive_timeout_s`, at most `api.max_connections` are open, the daemon's file
descriptors come back to where they started, and a real request is answered throughout.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from gatewayd.api.auth import hash_token
from tests.fault.daemon_setup import TOKEN, Daemon
from tests.helpers import free_port, wait_for, write_yaml

HEADER_TIMEOUT_S = 2.0
KEEPALIVE_TIMEOUT_S = 3.0
BODY_TIMEOUT_S = 3.0
MAX_CONNECTIONS = 256
GATEWAY = "gatewayd_gw-hostile"
DEVICES = "/v5/iot/local/devices"
SHADOW = f"{DEVICES}/{GATEWAY}/shadow"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("hostile")
    port = free_port()
    config = write_yaml(
        tmp / "gw.yaml",
        {
            "gateway": {"node_id": "gw-hostile"},
            "state_dir": str(tmp / "state"),
            "api": {
                "port": port,
                "tokens": {"tests": {"sha256": hash_token(TOKEN), "scope": "admin"}},
                "header_timeout_s": HEADER_TIMEOUT_S,
                "keepalive_timeout_s": KEEPALIVE_TIMEOUT_S,
                "body_timeout_s": BODY_TIMEOUT_S,
                "max_connections": MAX_CONNECTIONS,
            },
        },
    )
    gw = Daemon(config, port, tmp / "daemon.log")
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()


def raw(port: int, request: bytes, timeout_s: float = 10.0) -> tuple[int, dict[str, Any]]:
    """Send bytes as they are (no client library re-encodes them); the status and JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body) if body.startswith(b"{") else {}


def http(method: str, path: str, body: bytes = b"", headers: bytes = b"") -> bytes:
    auth = b"X-Auth-Token: " + TOKEN.encode() + b"\r\n"
    return (
        f"{method} {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n".encode()
        + (headers or auth)
        + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def answered(gw: Daemon) -> bool:
    """A real client's request, answered with 200."""
    url = f"http://127.0.0.1:{gw.api_port}/v1/outbox/stats"
    req = urllib.request.Request(url, headers={"X-Auth-Token": TOKEN})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return bool(resp.status == 200)


def open_fds(gw: Daemon) -> int:
    assert gw.proc is not None
    return len(os.listdir(f"/proc/{gw.proc.pid}/fd"))  # noqa: PTH208 - a count, not paths


def still_alive(gw: Daemon) -> None:
    assert gw.proc is not None
    assert gw.proc.poll() is None, "the daemon exited"
    assert gw.get("/healthz")["live"] is True
    assert "Traceback" not in gw.log.read_text()


@pytest.mark.parametrize("header", [b"X-Auth-Token: ", b"Authorization: Bearer "])
def test_token_header_not_utf8_is_400_naming_the_header(daemon: Daemon, header: bytes) -> None:
    status, body = raw(
        daemon.api_port, http("GET", "/v1/outbox/stats", headers=header + b"\xff\xfe\r\n")
    )
    assert status == 400
    assert body["error_code"] == "INVALID_HEADER"
    name = header.split(b":")[0].decode()
    assert body["error_msg"].startswith(f"{name}: not valid UTF-8")
    still_alive(daemon)


NESTED = {
    "arrays": b"[" * 200_000,
    "objects": b'{"a":' * 200_000,
    "arrays in a field": b'{"node_id":' + b"[" * 200_000 + b"]" * 200_000 + b"}",
}


@pytest.mark.parametrize("path", [DEVICES, SHADOW], ids=["create", "shadow"])
@pytest.mark.parametrize("body", list(NESTED.values()), ids=list(NESTED))
def test_deeply_nested_body_is_400(daemon: Daemon, path: str, body: bytes) -> None:
    method = "POST" if path == DEVICES else "PUT"
    status, reply = raw(daemon.api_port, http(method, path, body))
    assert status == 400
    assert reply == {
        "error_code": "INVALID_JSON",
        "error_msg": "body: nested more than 32 levels deep",
    }
    still_alive(daemon)


BIG = "1" + "0" * 4999
NUMBERS = [
    (
        DEVICES,
        f'{{"node_id":"n1","product_id":"p","extension_info":{{"n":{BIG}}}}}',
        "extension_info.n",
    ),
    (DEVICES, f'{{"node_id":-{BIG},"product_id":"p"}}', "node_id"),
    (SHADOW, f'{{"shadow":[{{"service_id":"s","desired":{{"v":{BIG}}}}}]}}', "shadow.0.desired.v"),
    (
        SHADOW,
        f'{{"shadow":[{{"service_id":"s","desired":{{"v":[1,{BIG}]}}}}]}}',
        "shadow.0.desired.v.1",
    ),
]


@pytest.mark.parametrize(("path", "body", "field"), NUMBERS)
def test_five_thousand_digit_integer_is_400_naming_the_field(
    daemon: Daemon, path: str, body: str, field: str
) -> None:
    method = "POST" if path == DEVICES else "PUT"
    status, reply = raw(daemon.api_port, http(method, path, body.encode()))
    assert status == 400
    assert reply == {
        "error_code": "INVALID_FIELD",
        "error_msg": f"{field}: an integer of 5000 digits; at most 64",
    }
    still_alive(daemon)


OTHER = [
    (b'{"shadow":[{"service_id":"s","desired":{"v":NaN}}]}', "INVALID_JSON",
     "body: NaN is not JSON"),
    (b'{"shadow":[{"service_id":"s","desired":{"v":1e999}}]}', "INVALID_FIELD",
     "shadow.0.desired.v: the number 1e999 is out of range"),
    (b'{"shadow":[{"service_id":"s","desired":{"v":"\\ud800"}}]}', "INVALID_FIELD",
     "shadow.0.desired.v: a string holds a lone UTF-16 surrogate"),
    (b'{"shadow":[{"service_id":"\xff\xfe"}]}', "INVALID_JSON", "body: not UTF-8 (byte 26)"),
    (b'{"shadow": [', "INVALID_JSON", "body: not valid JSON"),
    (b"[]", "INVALID_JSON", "body: must be a JSON object"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "code", "message"), OTHER)
def test_other_bodies_no_parser_takes_are_400(
    daemon: Daemon, body: bytes, code: str, message: str
) -> None:
    status, reply = raw(daemon.api_port, http("PUT", SHADOW, body))
    assert status == 400
    assert reply["error_code"] == code
    assert reply["error_msg"].startswith(message)
    still_alive(daemon)


def test_body_too_large_is_413_and_a_body_that_stops_is_408(daemon: Daemon) -> None:
    status, reply = raw(daemon.api_port, http("PUT", SHADOW, b" " * (1024 * 1024 + 1)))
    assert (status, reply["error_msg"]) == (413, "body: larger than 1048576 bytes")

    with socket.create_connection(("127.0.0.1", daemon.api_port), timeout=10) as sock:
        sock.sendall(http("PUT", SHADOW, b'{"shadow":[]}')[:-5])
        started = time.monotonic()
        data = sock.recv(65536)
        waited = time.monotonic() - started
    assert data.startswith(b"HTTP/1.1 408 ")
    assert b"body: not received within 3 s" in data
    assert BODY_TIMEOUT_S - 0.5 < waited < BODY_TIMEOUT_S + 2
    still_alive(daemon)


def test_an_idle_keep_alive_connection_is_closed_after_keepalive_timeout(daemon: Daemon) -> None:
    with socket.create_connection(("127.0.0.1", daemon.api_port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        reply = sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200 ")
        answered_at = time.monotonic()
        assert _closed(sock)
        idle = time.monotonic() - answered_at
    assert KEEPALIVE_TIMEOUT_S - 0.5 < idle < KEEPALIVE_TIMEOUT_S + 2


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.mark.timeout(60)
def test_idle_and_half_sent_connections_are_closed_and_fds_come_back(daemon: Daemon) -> None:
    wait_for(lambda: open_fds(daemon) < 40, 10, "the earlier tests' connections to close")
    before = open_fds(daemon)
    socks: dict[socket.socket, float] = {}
    sel = selectors.DefaultSelector()
    peak = before
    answered_during = 0
    try:
        for i in range(1000):
            sock = socket.create_connection(("127.0.0.1", daemon.api_port), timeout=10)
            if i >= 500:  # half-sent: a request line and part of a header, then nothing
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
            sock.setblocking(False)
            socks[sock] = time.monotonic()
            sel.register(sock, selectors.EVENT_READ)
            if i % 100 == 99:
                peak = max(peak, open_fds(daemon))
                answered_during += answered(daemon)
        opened_all = time.monotonic()
        lifetimes: list[float] = []
        deadline = opened_all + HEADER_TIMEOUT_S + 3
        while socks and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if _closed(sock):
                    lifetimes.append(time.monotonic() - socks.pop(sock))
                    sel.unregister(sock)
                    sock.close()
            peak = max(peak, open_fds(daemon))
        still_open = len(socks)
        last_closed_after = time.monotonic() - opened_all
    finally:
        for sock in socks:
            sock.close()
        sel.close()
    assert still_open == 0, f"{still_open} of 1000 connections still open"
    assert max(lifetimes) < HEADER_TIMEOUT_S + 1.5
    assert peak <= before + MAX_CONNECTIONS + 5, f"fds went from {before} to {peak}"
    assert answered_during == 10
    wait_for(lambda: open_fds(daemon) <= before + 2, 10, "the daemon's fds to come back")
    after = open_fds(daemon)
    assert answered(daemon)
    still_alive(daemon)
    print(
        f"fds before {before}, peak {peak}, after {after}; all 1000 closed "
        f"{last_closed_after:.1f} s after the last opened, longest life {max(lifetimes):.2f} s"
    )


def test_when_every_connection_is_busy_a_new_one_is_closed_at_once(daemon: Daemon) -> None:
    wait_for(lambda: open_fds(daemon) < 40, 10, "the earlier tests' connections to close")
    before = open_fds(daemon)
    busy = []
    try:
        for _ in range(MAX_CONNECTIONS):  # each a handler waiting for the rest of its body
            sock = socket.create_connection(("127.0.0.1", daemon.api_port), timeout=10)
            sock.sendall(http("PUT", SHADOW, b'{"shadow":[]}')[:-5])
            busy.append(sock)
        wait_for(lambda: open_fds(daemon) >= before + MAX_CONNECTIONS, 5, "all connections open")
        with socket.create_connection(("127.0.0.1", daemon.api_port), timeout=10) as late:
            late.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
            started = time.monotonic()
            assert _closed(late)
            refused_in = time.monotonic() - started
        assert refused_in < 1.0
        # Each busy one is answered when its body is overdue, then closed; nothing is stuck.
        answers = {sock.recv(65536).split(b"\r\n", 1)[0] for sock in busy}
        assert answers == {b"HTTP/1.1 408 Request Timeout"}
    finally:
        for sock in busy:
            sock.close()
    wait_for(lambda: open_fds(daemon) <= before + 2, 10, "the daemon's fds to come back")
    assert answered(daemon)
    still_alive(daemon)
