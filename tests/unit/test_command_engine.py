"""The command engine's queueing: per device in order, devices apart, failures contained."""

from __future__ import annotations

import asyncio
from typing import Any

from gatewayd.commands.engine import CommandEngine


class Answers:
    """Where the engine's answers go: kept in order; `fail` makes one answer raise."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []
        self.fail: set[tuple[str, str]] = set()
        self.changed = asyncio.Event()

    async def answer(
        self, device_id: str, command_id: str, status: str, message: str,
        response: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        del device_id, response
        if (command_id, status) in self.fail:
            raise OSError("disk full")
        self.seen.append((command_id, status, message))
        self.changed.set()

    def ended(self, command_id: str) -> bool:
        return any(c == command_id and s in {"done", "error"} for c, s, _ in self.seen)


class Unfinished:
    def __init__(self, rows: list[tuple[str, str]]) -> None:
        self.rows = rows

    async def unfinished_commands(self) -> list[tuple[str, str]]:
        return self.rows


async def no_product(device_id: str) -> None:
    del device_id


async def until(answers: Answers, *ids: str) -> None:
    async with asyncio.timeout(5):
        while not all(answers.ended(i) for i in ids):
            answers.changed.clear()
            await answers.changed.wait()


async def test_devices_run_apart_each_in_order_and_a_failed_answer_stays_its_own():
    release = asyncio.Event()

    async def hold(device_id: str, parameters: dict[str, Any]) -> tuple[str, str]:
        del device_id, parameters
        await release.wait()
        return "done", "held"

    answers = Answers()
    answers.fail.add(("p2", "in_progress"))
    engine = CommandEngine(
        answers, Unfinished([("old", "a"), ("early", "a")]), no_product,
        {"ping": hold, "pong": hold}, universal=frozenset({"ping"}),
    )  # fmt: skip
    await engine.submit("a", "early", "nope", {})  # claimed before the engine started
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(engine.run())
        await engine.started.wait()
        await engine.submit("a", "p1", "ping", {})
        await engine.submit("a", "p2", "ping", {})
        await engine.submit("a", "p3", "ping", {})
        await engine.submit("b", "b1", "pong", {})  # undeclared on b: no product
        await until(answers, "early", "b1")  # b is not held up by a's held command
        assert not answers.ended("p1")
        release.set()
        await until(answers, "p1", "p3")
        task.cancel()
    ends = [(c, s, m) for c, s, m in answers.seen if s != "in_progress"]
    assert ends[0] == ("old", "error", "interrupted")  # "early" was queued: not interrupted
    assert ("early", "error", "command 'nope' is not supported by a") in ends
    assert ("b1", "error", "command 'pong' is not supported by b") in ends
    order = [c for c, s, _ in ends if c.startswith("p")]
    assert order == ["p1", "p3"]  # p2's answer failed: logged, and p3 still ran after it
