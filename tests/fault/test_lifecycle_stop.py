"""Issue 14, item 7: SIGTERM (or SIGINT) at any moment stops the real daemon within 5 s, exit 0.

The moments: a connect to a peer that accepts TCP and never answers the CONNECT, an outage
with a backlog (the link in its backoff), a drain of that backlog, and a second signal while
the first stop is closing the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sqlite3
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.fault.daemon_setup import TOKEN, Spawned, check_no_loss, free_port
from tests.fault.test_lifecycle_startup import LINGERING, STOP_S, lifecycle_config
from tests.mqtt_broker import Broker
from tests.refcloud import RefCloud

pytestmark = [pytest.mark.timeout(120)]

MQTT_CONNECT = 0x10
# Well below paho's 5 s bound on a TCP connect: what a stop took while it waited for one.
CONNECT_THREAD_S = 2.5


class SilentBroker:
    """Accepts TCP, reads the CONNECT, never answers: the connect can only end by timeout."""

    def __init__(self) -> None:
        self.connects = 0
        self.got_connect = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        first = await reader.read(1)
        if first and first[0] == MQTT_CONNECT:
            self.connects += 1
            self.got_connect.set()
        with contextlib.suppress(ConnectionError):
            while await reader.read(4096):
                pass

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[SilentBroker]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            for writer in self._writers:
                writer.close()
            await server.wait_closed()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_during_a_connect_that_is_never_answered_stops_it(tmp_path, sig):
    async with SilentBroker().running() as peer:
        # The connect would wait 60 s for its CONNACK: only the stop can end it.
        config = lifecycle_config(tmp_path, peer.port, free_port(), connect_timeout_s=60)
        daemon = await Spawned.start(config)
        try:
            await daemon.wait_line("ready")
            async with asyncio.timeout(15):
                await peer.got_connect.wait()
            status, took = await daemon.stop(sig, STOP_S)
        finally:
            await daemon.kill()
    print(f"{sig.name} while the CONNECT waits for its answer: exit {status} in {took:.2f} s")
    assert status == 0, daemon.log[-2000:]
    assert peer.connects == 1
    assert "Traceback" not in daemon.log
    assert LINGERING not in daemon.log, daemon.log[-3000:]


@contextlib.contextmanager
def dropping_syns() -> Iterator[int]:
    """A port whose SYNs go unanswered: a listener with a full accept queue, never accepting.

    A TCP connect to it hangs, as one to a host behind a firewall that drops packets does;
    paho's connect (on an executor thread, bounded by its own 5 s) waits for it.
    """
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        for _ in range(3):  # fill the queue; the kernel drops the SYNs after that
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        yield port


def syn_sent_to(port: int) -> int:
    """Sockets in SYN_SENT towards 127.0.0.1:port (from /proc/net/tcp)."""
    target = f"0100007F:{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[2] == target and line.split()[3] == "02")


async def test_sigterm_while_a_tcp_connect_hangs_is_not_held_by_the_connect(tmp_path):
    """The stop does not wait for the connect's thread: that wait was up to 5 s (paho's bound)
    for a dropped SYN, and as long as the resolver's timeouts for an unreachable DNS server."""
    with dropping_syns() as port:
        baseline = syn_sent_to(port)
        daemon = await Spawned.start(lifecycle_config(tmp_path, port, free_port()))
        try:
            await daemon.wait_line("ready")
            async with asyncio.timeout(10):
                while syn_sent_to(port) <= baseline:
                    await asyncio.sleep(0.02)
            status, took = await daemon.stop(signal.SIGTERM, STOP_S)
        finally:
            await daemon.kill()
    print(f"SIGTERM while the TCP connect hangs: exit {status} in {took:.2f} s")
    assert status == 0, daemon.log[-2000:]
    assert took < CONNECT_THREAD_S, "the exit waited for the connect's thread"
    assert LINGERING not in daemon.log, daemon.log[-3000:]


async def test_sigterm_during_the_drain_of_a_backlog_stops_it_and_loses_nothing(tmp_path):
    """A backlog built during an outage; the stop comes as the cloud receives its first part.
    Then a second run drains the rest: every record arrives, none with a gap."""
    broker = Broker(tmp_path / "broker", persistence=True)
    broker.start()
    try:
        async with RefCloud(broker.port).running() as cloud:
            # Drained at 2,000 records/s while 1,000/s keep coming: the drain lasts seconds.
            port = free_port()
            config = lifecycle_config(
                tmp_path, broker.port, port, reconnect_max_s=0.5, rate_limit_msg_s=2000
            )
            daemon = await Spawned.start(config)
            try:
                await cloud.wait(lambda: len(cloud.telemetry()) >= 100, timeout_s=20)
                broker.stop()
                backlog = await _backlog(tmp_path, at_least=3000)
                broker.start()
                # Draining: the daemon's own count of what it holds has gone down by 500.
                async with asyncio.timeout(20):
                    while await _records(port) > backlog - 500:
                        await asyncio.sleep(0.05)
                status, took = await daemon.stop(signal.SIGTERM, STOP_S)
            finally:
                await daemon.kill()
            left = await _stored(tmp_path)
            print(
                f"SIGTERM while draining a backlog of {backlog}: exit {status} in {took:.2f} s, "
                f"{left} records left for the next run"
            )
            assert status == 0, daemon.log[-2000:]
            assert LINGERING not in daemon.log, daemon.log[-3000:]
            assert left > 0, "the drain was over before the stop: nothing was proven"
            await _drain(tmp_path, broker, cloud)
    finally:
        broker.stop()


async def test_a_second_signal_while_the_first_stop_closes_the_outbox(tmp_path):
    """An outage, a backlog buffered and being committed: SIGTERM, then SIGINT as the daemon
    logs that it is stopping (Ctrl-C pressed twice). The second changes nothing: the stop
    under way finishes, in time, with nothing cancelled twice."""
    broker = Broker(tmp_path / "broker")  # never started: the whole run is an outage
    config = lifecycle_config(tmp_path, broker.port, free_port(), reconnect_max_s=0.5)
    daemon = await Spawned.start(config)
    try:
        await daemon.wait_line("ready")
        await _backlog(tmp_path, at_least=2000)
        daemon.proc.send_signal(signal.SIGTERM)
        await daemon.wait_line("stopping")
        status, took = await daemon.stop(signal.SIGINT, STOP_S)
    finally:
        await daemon.kill()
    print(f"SIGINT during the stop: exit {status} {took:.2f} s after it")
    assert status == 0, daemon.log[-2000:]
    assert "Traceback" not in daemon.log
    assert LINGERING not in daemon.log, daemon.log[-3000:]


async def _backlog(tmp_path: Path, at_least: int) -> int:
    """Wait until the outbox file holds `at_least` records."""
    async with asyncio.timeout(30):
        while (n := await _stored(tmp_path)) < at_least:
            await asyncio.sleep(0.2)
    return n


async def _stored(tmp_path: Path) -> int:
    """Records in the outbox file, read with SQLite as they are."""
    path = tmp_path / "state" / "outbox.db"

    def count() -> int:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            conn.execute("PRAGMA busy_timeout = 2000")
            return int(conn.execute("SELECT count(*) FROM records").fetchone()[0])

    return await asyncio.to_thread(count)


async def _drain(tmp_path: Path, broker: Broker, cloud: RefCloud) -> None:
    port = free_port()
    config = lifecycle_config(tmp_path, broker.port, port, producing=False)
    daemon = await Spawned.start(config)
    try:
        await daemon.wait_line("ready")
        async with asyncio.timeout(60):
            while await _records(port) > 0:
                await asyncio.sleep(0.2)
        await daemon.stop(signal.SIGTERM, STOP_S)
    finally:
        await daemon.kill()
    marker = "marker"
    await cloud.push(marker, "cloud_settings/update", {"property": "end", "value": 1}, 60)
    await cloud.wait(lambda: cloud.of("cloud_settings/update", marker), timeout_s=30)
    highest = check_no_loss(cloud.telemetry())
    sent = sum(h + 1 for h in highest.values())
    unique = len({u.body["record_id"] for u in cloud.telemetry()})
    print(f"sent {sent}, delivered {unique}, duplicated {len(cloud.telemetry()) - unique}")
    assert unique == sent


async def _records(port: int) -> int:
    def get() -> int:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/outbox/stats", headers={"X-Auth-Token": TOKEN}
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            return int(json.load(resp)["records"])

    return await asyncio.to_thread(get)
