"""Runs each device's commands one at a time, in arrival order, each under a timeout.

A command reaches the engine once it is claimed by id (`CloudState.claim_command`), so a
redelivery never gets here. Each device with queued commands has one worker task in the
engine's TaskGroup: a slow device holds up its own commands only, never the MQTT listen loop
or another device. Whatever goes wrong inside one command (a refusal, a timeout, a bug) is
that command's `error`, never the engine's end. A command claimed but not finished when the
daemon died is answered `error` "interrupted" at the next start and never run again.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gatewayd.commands.bound import BoundCommand, Outcome
from gatewayd.commands.params import CommandRefused, check_parameters, find_command
from gatewayd.products import Product

__all__ = ["DEFAULT_TIMEOUT_S", "Builtin", "CommandEngine", "Queued", "StatusSink"]

DEFAULT_TIMEOUT_S = 20.0
INTERRUPTED = "interrupted"

log = logging.getLogger(__name__)

Builtin = Callable[[str, dict[str, Any]], Awaitable[tuple[str, str]]]
"""A command the daemon runs itself: (device_id, checked parameters) -> (status, message)."""


class StatusSink(Protocol):
    """Where each status of a command goes (its record, then `commands/update`)."""

    async def answer(
        self,
        device_id: str,
        command_id: str,
        status: str,
        message: str,
        response: dict[str, Any] | None = None,
    ) -> None:
        """Record and tell one status (with the response fields, when it ends `done`)."""
        ...


class Unfinished(Protocol):
    """The commands left claimed but unfinished by a daemon that died."""

    async def unfinished_commands(self) -> list[tuple[str, str]]:
        """(command id, device id) of every command still pending or in_progress."""
        ...


@dataclass(frozen=True, slots=True)
class Queued:
    """One claimed command waiting for its device's worker."""

    device_id: str
    command_id: str
    name: str
    parameters: Any


class CommandEngine:
    """The one place commands run, whatever surface they came from.

    Args:
        sink: records and answers each status.
        store: finds the commands a previous run left unfinished.
        product_of: the product of a device (None when it has none).
        builtins: commands the daemon runs itself, by name; `universal` ones (e.g. `ping`)
            answer for every device, the others only where the device's product declares them.
        universal: names of builtins every device answers.
        bindings: the site's binding of a command on a device (YAML `commands:`), if any.
        timeout_s: how long one command may run before it is answered `error` "timeout".
    """

    def __init__(  # noqa: PLR0913 - injected collaborators and two settings
        self,
        sink: StatusSink,
        store: Unfinished,
        product_of: Callable[[str], Awaitable[Product | None]],
        builtins: Mapping[str, Builtin],
        *,
        universal: frozenset[str] = frozenset({"ping"}),
        bindings: Callable[[str, str], BoundCommand | None] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._bindings = bindings or (lambda _device, _name: None)
        self._sink = sink
        self._store = store
        self._product_of = product_of
        self._builtins = dict(builtins)
        self._universal = universal
        self._timeout_s = timeout_s
        self._queues: dict[str, collections.deque[Queued]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self.started = asyncio.Event()  # unfinished commands answered, workers may start
        self.counts = {"done": 0, "error": 0}

    async def run(self) -> None:
        """Answer what a previous run left unfinished, then run workers until cancelled."""
        queued = {c.command_id for queue in self._queues.values() for c in queue}
        for command_id, device_id in await self._store.unfinished_commands():
            if command_id in queued:  # claimed by this run before it got here: it will run
                continue
            log.warning("%s: command %r was interrupted by a restart", device_id, command_id)
            await self._sink.answer(device_id, command_id, "error", INTERRUPTED)
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            self.started.set()
            for device_id in list(self._queues):
                self._start(device_id)
            try:
                await asyncio.Future()  # the workers live in the group until cancellation
            finally:
                self._tg = None

    async def submit(self, device_id: str, command_id: str, name: str, parameters: Any) -> None:
        """Queue a claimed command behind the device's earlier ones; returns at once."""
        queue = self._queues.get(device_id)
        if queue is not None:
            queue.append(Queued(device_id, command_id, name, parameters))
            return
        self._queues[device_id] = collections.deque(
            [Queued(device_id, command_id, name, parameters)]
        )
        if self._tg is not None:
            self._start(device_id)

    def _start(self, device_id: str) -> None:
        assert self._tg is not None
        self._tg.create_task(self._worker(device_id), name=f"commands[{device_id}]")

    async def _worker(self, device_id: str) -> None:
        queue = self._queues[device_id]
        try:
            while queue:
                try:
                    await self._run_one(queue[0])
                except Exception:  # answering failed (the disk): that command's, not ours
                    log.exception("%s: command %r not answered", device_id, queue[0].command_id)
                queue.popleft()
        finally:
            if not queue:
                del self._queues[device_id]

    async def _run_one(self, command: Queued) -> None:
        device, command_id = command.device_id, command.command_id
        await self._sink.answer(device, command_id, "in_progress", "")
        bound = self._bindings(device, command.name)
        timeout_s = self._timeout_s if bound is None or bound.timeout_s is None else bound.timeout_s
        response: dict[str, Any] = {}
        try:
            async with asyncio.timeout(timeout_s):
                status, message, response = await self._execute(command, bound)
        except CommandRefused as exc:
            status, message = "error", str(exc)
        except TimeoutError:
            status, message = "error", "timeout"
        except Exception as exc:  # a bug in one command: its own error, logged, never the end
            log.exception("%s: command %r failed", device, command_id)
            status, message = "error", f"the gateway failed to run it ({type(exc).__name__})"
        self.counts["done" if status == "done" else "error"] += 1
        await self._sink.answer(device, command_id, status, message, response or None)

    async def _execute(self, command: Queued, bound: BoundCommand | None) -> Outcome:
        name = command.name
        if name in self._universal and name in self._builtins and bound is None:
            return (*await self._builtins[name](command.device_id, {}), {})
        product = await self._product_of(command.device_id)
        declared = find_command(product, name, command.device_id)
        parameters = check_parameters(declared, command.parameters)
        if bound is not None:
            return await bound.run(parameters)
        builtin = self._builtins.get(name)
        if builtin is None:
            msg = f"command {name!r} is declared but not bound on {command.device_id}"
            raise CommandRefused(msg)
        return (*await builtin(command.device_id, parameters), {})
