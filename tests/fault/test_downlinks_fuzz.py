"""Generated downlinks into `Downlinks.handle` over real SQLite: no exception escapes.

The store, the outbox and the cloud state are the daemon's own, on files in tmp_path; the
config path goes on into the real shadows. Topics are every downlink kind of the gateway and
of a child, plus stray ones; payloads are arbitrary bytes, arbitrary JSON, JSON near each
kind's schema and mutations of it. Hostile input must come out `invalid` or `ok`; `failed`
is kept for storage faults, which the last tests make happen for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gatewayd.bridge.cloud_sync import CloudDesired
from gatewayd.cloud.children import ConfiguredChildren
from gatewayd.cloud.dialects import native
from gatewayd.cloud.downlinks import BuiltinCommands, Downlinks, LogBudget
from gatewayd.devices import DeviceCreate
from gatewayd.store import open_store
from gatewayd.store.cloud_state import CloudState, cloud_state_schema
from gatewayd.store.outbox import Outbox, open_outbox
from tests.store_fixtures import WATER, store_settings

GW = "gatewayd_gw1"
CHILD = f"{WATER}_n1"
FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- what the cloud might send --------------------------------------------------------------
TOPICS = st.one_of(
    st.sampled_from(
        [native.topic(GW, k) for k in (*native.DEVICE_DOWNLINKS, *native.GATEWAY_DOWNLINKS)]
        + [native.topic(CHILD, k) for k in native.DEVICE_DOWNLINKS]
    ),
    st.builds(native.topic, st.text(max_size=30), st.text(max_size=30)),
    st.text(max_size=60),
)
# Any code point, and often the awkward ones: lone surrogates (valid JSON escapes, not storable
# text), NUL, a line separator, a byte-order mark. A surrogate anywhere makes a payload invalid,
# so values meant to pass use the text without them.
ODD = ["\x00", "\u2028", "\ufeff", "\U0001f600"]
CHARS_OK = st.characters(codec=None) | st.sampled_from(ODD)
TEXT_OK = st.text(CHARS_OK, max_size=20)
TEXT = st.text(
    st.characters(codec=None, exclude_categories=()) | st.sampled_from([*ODD, "\ud800", "\udfff"]),
    max_size=20,
)


def _json(text: st.SearchStrategy[str], *, finite: bool = False) -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**45), max_value=10**45),
        # NaN and infinities unless finite: JSON has neither, the parser refuses them.
        st.floats(allow_nan=not finite, allow_infinity=not finite),
        text,
        st.sampled_from(["pending", "add", "delete", "ping", "1", "", "2024-01-01T00:00:00Z"]),
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
        max_leaves=12,
    )


ANY = _json(TEXT)
ANY_OK = _json(TEXT_OK, finite=True)
ID = st.sampled_from(["c1", "c2", "r1", CHILD]) | st.text(CHARS_OK, min_size=1, max_size=20)
FIELDS = st.sampled_from(["temperature", "valve_open", "label", "flow", "WaterMeter", "Battery"])


def _mostly(right: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The right type three times in four, any JSON value otherwise."""
    # Not n == 0: hypothesis draws the simplest value, 0, far more often than one in four.
    return st.builds(lambda n, good, bad: bad if n == 3 else good, st.integers(0, 3), right, ANY)


def _near(
    required: dict[str, st.SearchStrategy[Any]], optional: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[dict[str, Any]]:
    """A kind's object: required fields mostly there, optional ones sometimes, values mostly
    of the right type, plus stray fields."""
    schema = {**required, **optional}
    return st.builds(
        lambda drop, present, values, extra: {
            **extra,
            **{k: values[k] for k in schema if (k in required and not drop) or k in present},
        },
        st.integers(0, 4).map(lambda n: n == 4),
        st.sets(st.sampled_from(list(schema))),
        st.fixed_dictionaries({k: _mostly(v) for k, v in schema.items()}),
        st.dictionaries(FIELDS | TEXT_OK, ANY_OK, max_size=3),
    )


ADDED = st.fixed_dictionaries(
    {"device_id": _mostly(st.sampled_from([CHILD, GW, "x"]))},
    optional={k: _mostly(TEXT_OK) for k in ("node_id", "product_id", "access_key")},
)
FAILED = st.fixed_dictionaries(
    {},
    optional={
        "node_id": _mostly(TEXT_OK),
        "device_id": _mostly(st.sampled_from([CHILD, "x"])),
        "error_code": _mostly(st.integers() | TEXT_OK),
        "error_msg": _mostly(TEXT_OK),
    },
)
NEAR = {
    "config": _near(
        {"version": st.integers(0, 20) | ID},
        {
            "last_updated": TEXT_OK,
            "temperature": ANY_OK,
            "valve_open": ANY_OK,
            "WaterMeter": st.fixed_dictionaries(
                {},
                optional={
                    "temperature": _mostly(st.integers(-50, 200)),
                    "valve_open": _mostly(st.booleans()),
                    "label": _mostly(TEXT_OK),
                },
            ),
        },
    ),
    "commands": _near(
        {"id": ID, "name": st.just("ping") | ID},
        {"status": st.just("pending"), "parameters": ANY_OK},
    ),
    "license": _near(
        {"id": ID},
        {
            "data": TEXT_OK,
            "signature": TEXT_OK,
            "add": st.booleans(),
            "update": st.booleans(),
            "remove": st.booleans(),
        },
    ),
    "space_info": _near(
        {},
        {
            "location": st.dictionaries(TEXT_OK, ANY_OK),
            "maintenance": st.booleans(),
            "name": TEXT_OK,
        },
    ),
    "firmware": _near({"latest_fw_version": ID}, {"latest_fw_file_id": TEXT_OK}),
    "children/add/response": _near(
        {"request_id": ID},
        {
            "successful_devices": st.lists(ADDED, max_size=3),
            "failed_devices": st.lists(FAILED, max_size=3),
        },
    ),
    "children/delete/response": _near(
        {"request_id": ID},
        {
            "successful_devices": st.lists(st.sampled_from([CHILD, "x"]) | TEXT_OK, max_size=3),
            "failed_devices": st.lists(FAILED, max_size=3),
        },
    ),
    "children/notify": _near(
        {"version": st.integers() | ID, "event": st.sampled_from(["add", "delete"])},
        {"devices": st.lists(ADDED, max_size=3)},
    ),
}
WHERE = st.sampled_from(
    [(GW, k) for k in (*native.DEVICE_DOWNLINKS, *native.GATEWAY_DOWNLINKS)]
    + [(CHILD, k) for k in native.DEVICE_DOWNLINKS]
)


def _mutate(data: bytes, cuts: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for at, byte in cuts:
        if out:
            out[at % len(out)] = byte
    return bytes(out)


ENCODED = (st.one_of(*NEAR.values()) | ANY).map(lambda v: json.dumps(v).encode())
PAYLOADS = st.one_of(
    st.binary(max_size=300),
    ENCODED,
    ENCODED,
    st.builds(_mutate, ENCODED, st.lists(st.tuples(st.integers(0), st.integers(0, 255)))),
    st.builds(lambda o, c: b"[" * o + b"]" * c, st.integers(0, 80), st.integers(0, 80)),
    st.integers(0, 100_000).map(lambda n: b"[" * n + b"]" * n),  # the payload at 100,000
    st.integers(0, 6000).map(lambda n: b'{"id":"d","name":"ping","parameters":' + b"7" * n + b"}"),
)


# -- the daemon's parts on real files -------------------------------------------------------
@contextlib.asynccontextmanager
async def downlinks_on(tmp_path: Path) -> AsyncIterator[tuple[Downlinks, Outbox]]:
    app_settings = store_settings(tmp_path)
    path = app_settings.state_dir / "outbox.db"
    async with (
        open_store(app_settings) as store,
        open_outbox(path, app_settings.outbox, schema=cloud_state_schema) as outbox,
    ):
        await store.registry.create(DeviceCreate(node_id="n1", product_id=WATER))
        downlinks = Downlinks(
            GW,
            CloudState(outbox.worker),
            outbox,
            ConfiguredChildren(app_settings),
            BuiltinCommands(),
            CloudDesired(store.registry, store.products, store.shadows),
        )
        yield downlinks, outbox


def run_examples(tmp_path: Path, test: Callable[[asyncio.Runner, Downlinks], None]) -> Downlinks:
    """Hypothesis drives plain functions: one event loop holds the open files across examples."""
    with asyncio.Runner() as runner:
        stack = contextlib.AsyncExitStack()
        downlinks, _ = runner.run(stack.enter_async_context(downlinks_on(tmp_path)))
        try:
            test(runner, downlinks)
        finally:
            runner.run(stack.aclose())
    return downlinks


def test_no_generated_downlink_escapes_or_fails(tmp_path):
    @FUZZ
    @given(topic=TOPICS, payload=PAYLOADS)
    def one(runner: asyncio.Runner, downlinks: Downlinks, topic: str, payload: bytes) -> None:
        before = sum(downlinks.counts.values())
        runner.run(downlinks.handle(topic, payload))  # anything escaping fails the example
        assert sum(downlinks.counts.values()) == before + 1
        assert downlinks.counts["failed"] == 0

    downlinks = run_examples(tmp_path, lambda r, d: one(r, d))  # noqa: PLW0108 - given's wrapper
    assert downlinks.counts["invalid"] > 0


def test_near_schema_downlinks_on_every_kind_of_topic(tmp_path):
    applied: set[str] = set()

    @FUZZ
    @given(case=WHERE.flatmap(lambda w: st.tuples(st.just(w), NEAR[w[1]])))
    # The gateway's three kinds are 3 of the 13 places drawn from: each is also given once.
    @example(case=((GW, "children/add/response"), {"request_id": "r1"}))
    @example(case=((GW, "children/delete/response"), {"request_id": "r2"}))
    @example(case=((GW, "children/notify"), {"version": 1, "event": "add"}))
    def one(runner: asyncio.Runner, downlinks: Downlinks, case: tuple[tuple[str, str], Any]):
        (device, kind), body = case
        ok = downlinks.counts["ok"]
        runner.run(downlinks.handle(native.topic(device, kind), json.dumps(body).encode()))
        assert downlinks.counts["failed"] == 0
        if downlinks.counts["ok"] > ok:
            applied.add(kind)

    downlinks = run_examples(tmp_path, lambda r, d: one(r, d))  # noqa: PLW0108
    assert applied == set(NEAR), "the generator reaches every kind's handling"
    assert downlinks.counts["invalid"] > 0


# -- what goes wrong below a downlink is that downlink's failure ----------------------------
async def test_a_storage_failure_is_the_downlinks_own_and_the_next_one_works(tmp_path, caplog):
    command = {"id": "c1", "name": "ping"}
    async with downlinks_on(tmp_path) as (downlinks, outbox):
        await outbox.worker.call(lambda conn: conn.execute("PRAGMA query_only = ON"))
        await downlinks.handle(native.topic(GW, "commands"), json.dumps(command).encode())
        await downlinks.handle(native.topic(GW, "config"), b'{"version": 1, "mode": "eco"}')
        assert downlinks.counts == {"ok": 0, "invalid": 0, "failed": 2}
        await outbox.worker.call(lambda conn: conn.execute("PRAGMA query_only = OFF"))
        await downlinks.handle(native.topic(GW, "commands"), json.dumps(command).encode())
        assert downlinks.counts == {"ok": 1, "invalid": 0, "failed": 2}
        answers = await CloudState(outbox.worker).commands(GW)
        assert [(c.id, c.status, c.message) for c in answers] == [("c1", "done", "pong")]
    failed = [r for r in caplog.records if "failed, dropped" in r.getMessage()]
    assert len(failed) == 2
    assert "v1/device/gatewayd_gw1/commands" in failed[0].getMessage()
    assert "(28 bytes)" in failed[0].getMessage()
    assert "readonly" in failed[0].getMessage() or "read-only" in failed[0].getMessage()
    assert all(r.exc_info is None for r in failed)  # a storage error: no traceback


class Broken:
    """A command executor with a bug in it."""

    async def execute(self, device_id: str, name: str, parameters: Any) -> tuple[str, str]:
        del device_id, parameters
        raise KeyError(name)


async def test_an_executor_bug_is_answered_error_and_counted_failed(tmp_path):
    async with downlinks_on(tmp_path) as (downlinks, outbox):
        downlinks._executor = Broken()  # the collaborator the app injects
        await downlinks.handle(native.topic(GW, "commands"), b'{"id": "c9", "name": "reboot"}')
        assert downlinks.counts["failed"] == 1
        stored = await CloudState(outbox.worker).commands(GW)
        assert [(c.status, c.message) for c in stored] == [
            ("error", "the gateway failed to run it (KeyError)")
        ]


class Waiting:
    """A command executor that runs until it is cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def execute(self, device_id: str, name: str, parameters: Any) -> tuple[str, str]:
        del device_id, name, parameters
        self.started.set()
        await asyncio.Event().wait()
        return "done", ""


async def test_cancellation_goes_through_a_downlink(tmp_path):
    async with downlinks_on(tmp_path) as (downlinks, _):
        waiting = Waiting()
        downlinks._executor = waiting
        task = asyncio.create_task(
            downlinks.handle(native.topic(GW, "commands"), b'{"id":"c","name":"x"}')
        )
        await asyncio.wait_for(waiting.started.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert downlinks.counts == {"ok": 0, "invalid": 0, "failed": 0}


async def test_a_flood_of_bad_downlinks_logs_a_bounded_number_of_lines(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gatewayd.cloud.downlinks")
    now = [0.0]
    async with downlinks_on(tmp_path) as (downlinks, _):
        downlinks.log_budget = LogBudget(lines=20, window_s=60, clock=lambda: now[0])
        for _ in range(100):
            await downlinks.handle(native.topic(GW, "commands"), b"[" * 100_000)
        assert len(caplog.records) == 20
        assert "(100000 bytes)" in caplog.records[0].getMessage()
        now[0] = 61.0
        await downlinks.handle(native.topic(GW, "commands"), b"{}")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 22
    assert lines[20].startswith("80 log lines about downlinks left out in the last 61 s")
    assert downlinks.counts["invalid"] == 101
