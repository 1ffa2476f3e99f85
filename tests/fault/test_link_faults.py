"""A link that stalls, delays, drops and cuts, between the real daemon and a real broker.

The daemon produces 400 records/s (10 memory devices every 25 ms) through `tcp_proxy.Proxy`
(or a veth pair into a network namespace, `netns.py`). Each test asserts zero loss, counted per
record after draining, and the time from the path's return to the first telemetry at the
cloud. The bound asserted is `cloud.reconnect_max_s` (the longest backoff delay) plus
`CONNECT_S`, the connect, subscribe and resync on an idle loopback broker.

A silent link is found by the MQTT keep-alive: a ping after `keepalive_s` of silence, and the
session given up `keepalive_s` later (measured: 5.7-9.3 s with 5 s). A stall longer than that
is reconnected within the bound once the path returns. When the link was down (the netns
test), the old connection is silently dead while down; when the link returns, its next TCP
retransmission either carries it on or draws the broker host's reset, and the retransmission
backoff doubles, so it comes at most about the outage's length later. Past the keep-alive
detection the daemon has given it up already. So there the bound adds
min(outage, 2 x keepalive_s).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fault import netns
from tests.fault.daemon_setup import Daemon, free_port
from tests.fault.loss import Counts, api, config, drain, first_publish_after, fresh
from tests.fault.tcp_proxy import Proxy
from tests.mqtt_broker import Broker
from tests.refcloud import RefCloud

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

RECONNECT_MAX_S = 1.0
CONNECT_S = 1.0  # connect + subscribe + resync + the pump's first round, with margin
BOUND_S = RECONNECT_MAX_S + CONNECT_S
INTERVAL_S = 0.025  # 10 devices: 400 records/s
KEEPALIVE_S = 5  # daemon_setup's cloud.keepalive_s
DOWN_S = float(os.environ.get("TEST_DOWN_S", "4"))
CLOUD = {"reconnect_initial_s": 0.1, "reconnect_max_s": RECONNECT_MAX_S}


@contextlib.asynccontextmanager
async def through_proxy(tmp_path: Path) -> AsyncIterator[tuple[Broker, RefCloud, Proxy, Daemon]]:
    broker = Broker(tmp_path / "broker")
    broker.start()
    try:
        async with RefCloud(broker.port).running() as cloud, Proxy(broker.port).running() as proxy:
            port = free_port()
            path = config(tmp_path, proxy.port, port, cloud=CLOUD, interval_s=INTERVAL_S)
            daemon = Daemon(path, port, tmp_path / "daemon.log")
            await asyncio.to_thread(daemon.start)
            try:
                await cloud.wait(lambda: len(cloud.telemetry()) >= 300, timeout_s=20)
                yield broker, cloud, proxy, daemon
            finally:
                await asyncio.to_thread(daemon.stop)
    finally:
        broker.stop()


async def finish(tmp_path: Path, broker: Broker, cloud: RefCloud, daemon: Daemon) -> Counts:
    """Stop the producing daemon (it commits what it holds) and drain the rest directly."""
    await asyncio.to_thread(daemon.stop)
    result = await drain(tmp_path, broker.port, cloud, cloud=CLOUD)
    assert result.lost == 0
    assert result.sent > 1000
    print(result)
    return result


async def test_a_stall_beyond_the_keepalive_reconnects_and_loses_nothing(tmp_path):
    async with through_proxy(tmp_path) as (broker, cloud, proxy, daemon):
        proxy.stall()
        # The daemon gives up on the silent session after its keep-alive detection (5 s
        # keep-alive: ping after 5 s of silence, dead 5 s later); its new connects hang in the
        # stalled proxy too until their 2 s connect timeout.
        stalled = time.monotonic()
        await cloud.wait(lambda: proxy.accepted >= 2, timeout_s=20)
        detected = time.monotonic() - stalled
        await asyncio.sleep(1)  # the fault goes on for a moment after the daemon gave up
        back = time.monotonic()
        proxy.resume()
        # The old session's bytes cannot reach the cloud: the broker closed it after 1.5 x
        # keep-alive of silence, before the daemon gave up.
        took = await first_publish_after(cloud, back, timeout_s=15)
        print(
            f"stall {back - stalled:.1f} s: new connect {detected:.1f} s into it, "
            f"{proxy.accepted} connects, first publish {took:.3f} s after resume"
        )
        assert took < BOUND_S
        await finish(tmp_path, broker, cloud, daemon)


async def test_stalls_delays_drops_and_cuts_lose_nothing_and_resume_within_the_bound(tmp_path):
    async with through_proxy(tmp_path) as (broker, cloud, proxy, daemon):
        figures = []

        # A stall shorter than the keep-alive: the session survives and carries on at once.
        proxy.stall()
        await asyncio.sleep(2)  # the fault's length, not a wait for a condition
        held = (await api(daemon, "/v1/outbox/stats"))["records"]
        assert held > 400, "records should pile up while the link is silent"
        back = time.monotonic()
        proxy.resume()
        took = await first_publish_after(cloud, back, timeout_s=10)
        assert took < BOUND_S, f"first publish {took:.2f} s after a stall"
        assert proxy.accepted == 1, "a stall shorter than the keep-alive should not end the session"
        figures.append(f"stall 2 s: {took:.3f} s")

        # Every byte 300 ms late: the session holds and keeps delivering.
        proxy.delay_s = 0.3
        delayed = time.monotonic()
        await asyncio.sleep(2)  # the fault's length
        assert [u for u in cloud.telemetry()[-500:] if u.at > delayed + 1], "nothing while delayed"
        proxy.delay_s = 0.0
        assert proxy.accepted == 1, "a 300 ms delay should not end the session"

        # Both sockets aborted mid-stream, three times.
        for _ in range(3):
            # Each drop hits a working session: one that carries readings taken after it began.
            await fresh(cloud, time.time(), timeout_s=10)
            back = time.monotonic()
            assert proxy.drop() == 1
            # Records already at the broker still reach the cloud after the drop: count from
            # the broker's answer on a new connection.
            answered = await proxy.answered_after(back, timeout_s=10)
            took = await first_publish_after(cloud, answered, timeout_s=10, start=back)
            assert took < BOUND_S, f"first publish {took:.2f} s after a drop"
            figures.append(f"drop: {took:.3f} s")

        # Nothing listening for 2 s: connects are refused.
        await proxy.cut()
        await asyncio.sleep(2)  # the fault's length
        back = time.monotonic()
        await proxy.restore()
        answered = await proxy.answered_after(back, timeout_s=10)
        took = await first_publish_after(cloud, answered, timeout_s=10, start=back)
        assert took < BOUND_S, f"first publish {took:.2f} s after the cut ended"
        figures.append(f"cut 2 s: {took:.3f} s")
        print(f"first publish after the path returned: {'; '.join(figures)}")
        await finish(tmp_path, broker, cloud, daemon)


async def test_a_drop_before_the_subscribe_is_answered_reconnects_within_the_bound(tmp_path):
    async with through_proxy(tmp_path) as (_broker, cloud, proxy, _daemon):
        proxy.drop_after_answer = 1
        back = time.monotonic()
        assert proxy.drop() == 1
        try:
            answered = await proxy.answered_after(proxy.sessions[-1].accepted_at, BOUND_S + 1)
            took = await first_publish_after(cloud, answered, BOUND_S + 1, start=back)
        except TimeoutError:
            took = time.monotonic() - back
        assert took < BOUND_S, f"no publish {took:.1f} s after the drop ({proxy.accepted} connects)"


@pytest.fixture
def namespace():
    reason = netns.unavailable()
    if reason is not None:
        pytest.skip(reason)
    ns = netns.Namespace()
    ns.create()
    try:
        yield ns
    finally:
        ns.delete()


async def test_a_link_taken_down_loses_nothing_and_resumes_within_the_bound(tmp_path, namespace):
    ns = namespace
    broker = Broker(tmp_path / "broker")
    outer = free_port()
    with broker.conf.open("a") as conf:
        conf.write(f"listener {outer} {ns.host_addr}\n")
    broker.start()
    try:
        async with RefCloud(broker.port).running() as cloud:
            port = free_port()
            cloud_cfg = {**CLOUD, "host": ns.host_addr, "port": outer}
            path = config(
                tmp_path,
                outer,
                port,
                cloud=cloud_cfg,
                api={"host": ns.ns_addr},
                interval_s=INTERVAL_S,
            )
            daemon = netns.NetnsDaemon(ns, path, port, tmp_path / "daemon.log")
            await asyncio.to_thread(daemon.start)
            try:
                await cloud.wait(lambda: len(cloud.telemetry()) >= 300, timeout_s=20)
                down = time.monotonic()
                ns.down()
                await asyncio.sleep(DOWN_S)  # the fault's length
                back = time.monotonic()
                ns.up()
                took = await first_publish_after(cloud, back, timeout_s=30)
                print(f"link down {back - down:.1f} s: first publish {took:.3f} s after up")
                # Silently dead while down: the old connection's next TCP retransmission
                # (its backoff doubles, so it comes at most about the outage's length after
                # the return) carries it on; past the keep-alive detection (2 x keepalive_s)
                # the daemon has given it up and reconnects within the backoff.
                assert took < BOUND_S + min(DOWN_S, 2 * KEEPALIVE_S), f"{took:.2f} s after up"
                await finish(tmp_path, broker, cloud, daemon)
            finally:
                await asyncio.to_thread(daemon.stop)
    finally:
        broker.stop()
