"""The task tree: a bug anywhere stops everything; a stop request ends cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gatewayd.app import STOP_GRACE_S, App
from gatewayd.cli import startup_errors
from gatewayd.errors import ConfigError, ListenFailed, StateAccessDenied, StateDirLocked
from gatewayd.settings import Settings
from gatewayd.systemd import Notifier


def _settings(tmp_path) -> Settings:
    return Settings(
        gateway={"node_id": "g"},
        state_dir=tmp_path,
        api={"port": 0},
        connections={"c": {"driver": "memory", "devices": {"d": {"points": {"p": {}}}}}},
    )


class BuggyDriver:
    @contextlib.asynccontextmanager
    async def _open(self) -> AsyncIterator[object]:
        raise ZeroDivisionError("bug in a driver")
        yield  # pragma: no cover

    def connect(self):
        return self._open()


async def test_a_bug_in_any_task_ends_run_with_the_error(tmp_path):
    app = App(_settings(tmp_path), notifier=Notifier({}), build_driver=lambda _c: BuggyDriver())
    with pytest.raises(ExceptionGroup) as info:
        async with asyncio.timeout(5):
            await app.run()
    assert info.group_contains(ZeroDivisionError)


async def test_stop_request_ends_run(tmp_path):
    app = App(_settings(tmp_path), notifier=Notifier({}))
    task = asyncio.create_task(app.run())
    async with asyncio.timeout(5):
        while app.api is None or not app.api.bound.is_set():
            await asyncio.sleep(0.01)
    app.request_stop()
    async with asyncio.timeout(5):
        await task


def _files(state: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in state.iterdir()}


async def test_a_second_app_on_the_same_state_dir_is_refused_before_it_opens_anything(tmp_path):
    first = App(_settings(tmp_path), notifier=Notifier({}))
    task = asyncio.create_task(first.run())
    try:
        async with asyncio.timeout(5):
            while first.api is None or not first.api.bound.is_set():
                await asyncio.sleep(0.01)
        before = _files(tmp_path)
        second = App(_settings(tmp_path), notifier=Notifier({}))
        with pytest.raises(StateDirLocked) as info:
            await second.run()
        assert info.value.exit_status == 75
        lock = tmp_path / "gatewayd.lock"
        assert f"{lock} is locked by pid {os.getpid()}" in str(info.value)
        assert second.store is None
        assert second.outbox is None
        assert _files(tmp_path) == before
    finally:
        first.request_stop()
        async with asyncio.timeout(5):
            await task
    # Released with the first: a third one starts.
    third = App(_settings(tmp_path), notifier=Notifier({}))
    third.request_stop()
    task = asyncio.create_task(third.run())
    async with asyncio.timeout(5):
        await task


async def test_a_stop_requested_before_run_opens_nothing(tmp_path):
    state = tmp_path / "state"
    app = App(_settings(state), notifier=Notifier({}))
    app.request_stop()
    async with asyncio.timeout(5):
        await app.run()
    assert not state.exists()


class StubbornDriver:
    """A session that ignores the first cancellation it gets (a library bug, as in 3.11's
    wait_for); the second one ends it."""

    def __init__(self) -> None:
        self.ignored = 0

    @contextlib.asynccontextmanager
    async def _open(self) -> AsyncIterator[object]:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.ignored += 1
            await asyncio.sleep(3600)
        yield  # pragma: no cover

    def connect(self):
        return self._open()


async def test_a_task_that_ignores_the_stop_is_named_and_cancelled_again(tmp_path, caplog):
    driver = StubbornDriver()
    app = App(_settings(tmp_path), notifier=Notifier({}), build_driver=lambda _c: driver)
    task = asyncio.create_task(app.run())
    async with asyncio.timeout(5):
        while app.api is None or not app.api.bound.is_set():
            await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    asked = loop.time()
    app.request_stop()
    async with asyncio.timeout(STOP_GRACE_S + 3):
        await task
    took = loop.time() - asked
    assert driver.ignored == 1
    assert STOP_GRACE_S <= took < STOP_GRACE_S + 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(
        "still running after the stop began" in m and "task connection[c], in" in m and "_open" in m
        for m in errors
    ), errors
    assert "cancelling task connection[c] again" in errors


def test_the_reasons_a_start_failed_are_found_in_nested_groups_and_a_bug_wins():
    listen = ListenFailed("api: cannot listen on 127.0.0.1:8080: address in use")
    config = ConfigError("api.port: in use by the cloud link")
    assert startup_errors(listen) == [listen]
    assert startup_errors(ExceptionGroup("tg", [ExceptionGroup("inner", [listen])])) == [listen]
    assert startup_errors(ExceptionGroup("tg", [config, listen])) == [config, listen]
    # Anything else alongside is a bug: its traceback matters more than the reasons.
    assert startup_errors(ExceptionGroup("tg", [listen, ZeroDivisionError()])) == []
    assert startup_errors(ZeroDivisionError()) == []
    assert (listen.exit_status, StateDirLocked.exit_status, StateAccessDenied.exit_status) == (
        69,
        75,
        77,
    )
