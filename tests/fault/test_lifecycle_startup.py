"""Issue 14, items 7 and 9: a start that fails exits at once with its reason and status, and a
start that is stopped stops, at whatever moment the signal comes.

Each case runs the real daemon process against a real mosquitto broker.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fault.daemon_setup import Spawned, daemon_config, free_port
from tests.mqtt_broker import Broker

pytestmark = [pytest.mark.timeout(90)]

TRIES = 10
STOP_S = 5.0
# What the daemon logs when a task ignored its cancellation and had to be cancelled again:
# the stop still ends in time, but that is a bug these tests must see.
LINGERING = "still running after the stop began"


def lifecycle_config(
    tmp_path: Path,
    broker_port: int,
    api_port: int,
    *,
    producing: bool = True,
    node_id: str | None = None,
    **cloud: Any,
) -> Path:
    path = daemon_config(tmp_path, broker_port, api_port, producing=producing)
    data = yaml.safe_load(path.read_text())
    data["cloud"].update(cloud)
    if node_id is not None:
        data["gateway"]["node_id"] = node_id
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def broker(tmp_path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker") as running:
        yield running


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


async def test_a_taken_api_port_exits_69_at_once_every_time(tmp_path, broker, taken_port):
    """The case of the issue: the broker up, the API port taken. The uplink's connect races the
    API's failure; before the fix 3 of 7 starts hung for ever with SIGTERM ignored."""
    # Two daemons at a time (own state directories, own MQTT client ids): half the wall time.
    configs = [
        lifecycle_config(tmp_path / name, broker.port, taken_port, node_id=f"gw-{name}")
        for name in ("a", "b")
    ]
    reason = f"cannot start: api: cannot listen on 127.0.0.1:{taken_port}"
    took: list[float] = []

    async def attempt(config: Path) -> None:
        daemon = await Spawned.start(config)
        status, _ = await daemon.exit(timeout_s=30)
        assert status == 69, f"exit {status}\n{daemon.log[-2000:]}"
        assert sum(reason in line for line in daemon.lines) == 1, daemon.log[-2000:]
        assert "Traceback" not in daemon.log
        assert LINGERING not in daemon.log, daemon.log[-3000:]
        # From its first log line (the interpreter's start and imports are not the daemon's).
        took.append(daemon.exited_at - daemon.times[0])

    for _ in range(TRIES // 2):
        await asyncio.gather(*(attempt(config) for config in configs))
    assert len(took) == TRIES
    print(f"{TRIES} starts on a taken port: exit 69 {min(took):.2f}-{max(took):.2f} s after start")
    assert max(took) < STOP_S


@pytest.mark.parametrize(
    ("moment", "tries"),
    [
        ("starting", 1),  # the handlers in place, the daemon's modules still being imported
        ("state database", 1),  # the state store opening
        ("outbox", 1),  # the outbox opened, the task group starting
        ("local API on", 1),  # listening, the uplink connecting
        # The uplink subscribing: its SUBACK, like the CONNACK, is awaited with a wait_for
        # that swallowed a cancellation coming in the same loop iteration (half the tries).
        ("ready", 4),
    ],
)
async def test_sigterm_at_each_step_of_a_start_stops_it_cleanly(tmp_path, broker, moment, tries):
    config = lifecycle_config(tmp_path, broker.port, free_port())
    for _ in range(tries):
        daemon = await Spawned.start(config)
        try:
            await daemon.wait_line(moment)
            status, took = await daemon.stop(signal.SIGTERM, STOP_S)
        finally:
            await daemon.kill()
        early = any("stopped before starting" in line for line in daemon.lines)
        print(f"SIGTERM at {moment!r}: exit {status} in {took:.2f} s" + " (early)" * early)
        assert status == 0, daemon.log[-2000:]
        if early:  # the daemon was not built yet: it opened nothing
            assert not (tmp_path / "state").exists()
        assert "Traceback" not in daemon.log
        assert LINGERING not in daemon.log, daemon.log[-3000:]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_before_the_loop_runs_still_stops_it(tmp_path, broker, sig):
    """The signal lands while Python imports: the default action, or the daemon's own handler
    (which then stops before opening anything); either way it is gone within 5 s."""
    daemon = await Spawned.start(lifecycle_config(tmp_path, broker.port, free_port()))
    try:
        status, took = await daemon.stop(sig, STOP_S)
    finally:
        await daemon.kill()
    print(f"{sig.name} at spawn: exit {status} in {took:.2f} s")
    assert status in {0, -sig, 130}, daemon.log[-2000:]
    assert not (tmp_path / "state" / "outbox.db").exists() or status == 0
