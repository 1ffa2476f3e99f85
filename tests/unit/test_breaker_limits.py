"""The circuit breaker and the runner limits a connection's config sets."""

from __future__ import annotations

from drivers.memory import MemoryConnection
from drivers.modbus import ModbusRtuConnection
from gatewayd.backoff import Backoff
from gatewayd.bridge.breaker import Breaker
from gatewayd.bridge.limits import RunnerLimits


def test_breaker_trips_after_n_failures_then_probes_once():
    b = Breaker(failures_to_trip=3, backoff=Backoff(initial_s=2.0, max_s=8.0))
    assert b.allows(0.0)
    assert b.failed(0.0) is None
    assert b.failed(1.0) is None
    assert b.failed(2.0) == 2.0  # third failure opens it for 2 s
    assert not b.allows(3.9)
    assert b.allows(4.0)
    assert b.failed(4.0) == 4.0  # the half-open probe failed: open again, longer
    assert b.failed(8.0) == 8.0
    assert b.failed(16.0) == 8.0  # capped
    b.succeeded()
    assert b.allows(16.1)
    assert b.failed(17.0) is None  # closed again: back to counting


def test_bus_time_of_a_dead_device_is_bounded():
    """Per hour, a dead device with 0.5 s timeout and 2 retries costs a few seconds."""
    b = Breaker(failures_to_trip=3, backoff=Backoff(initial_s=2.0, max_s=60.0))
    cost_per_job = 0.5 * (1 + 2)
    now, bus = 0.0, 0.0
    interval = 1.0
    while now < 3600:
        if b.allows(now):
            bus += cost_per_job
            b.failed(now + cost_per_job)
        now += interval
    assert bus < 3600 * 0.05  # under 5 % of the bus, against 150 % without the breaker


def test_limits_come_from_the_connection_config():
    conn = ModbusRtuConnection.model_validate(
        {
            "driver": "modbus-rtu",
            "port": "/dev/ttyS0",
            "request_gap_s": 0.01,
            "retries": 2,
            "breaker_failures": 4,
            "breaker_initial_s": 0.5,
            "breaker_max_s": 30,
        }
    )
    limits = RunnerLimits.from_config(conn)
    assert limits.request_gap_s == 0.01
    assert limits.retries == 2
    assert limits.breaker_failures == 4
    assert limits.breaker == Backoff(initial_s=0.5, max_s=30.0)


def test_connections_without_the_fields_keep_defaults():
    limits = RunnerLimits.from_config(MemoryConnection(driver="memory"))
    assert limits == RunnerLimits()
