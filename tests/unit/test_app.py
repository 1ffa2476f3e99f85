"""The task tree: a bug anywhere stops everything; a stop request ends cleanly."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from gatewayd.app import App
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
