"""What the gateway does with each validated downlink of the native dialect.

Desired config is checked field by field: the fields the device's product takes become its
desired state, the others are refused by name on `config/update`, and the config's version is
stored as applied only when something of it was (docs/protocol.md). Licenses, space info and
firmware info are stored per device; commands are
claimed by id (a redelivered id is never executed again), then handed to the command engine
(`gatewayd.commands`), which runs them per device and answers on `commands/update` through
the outbox; children responses update the children's registration state.

A downlink comes from the network: whatever its topic, size, nesting or encoding, handling it
is that one message's business. A malformed one is `invalid`; anything else that goes wrong
while it is applied (a storage error, a bug) is `failed`. Either is logged with its topic and
size (a bounded number of lines per minute, so a flood cannot fill the journal), counted in
`counts` for /metrics, and dropped; it never ends the link. Only cancellation goes through.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from gatewayd.cloud.children import Child, ChildrenSource
from gatewayd.cloud.dialects import native
from gatewayd.store.cloud_state import CloudState
from gatewayd.store.outbox import Outbox, OutboxFull

__all__ = [
    "ADDED_BY_CLOUD",
    "RESULTS",
    "BuiltinCommands",
    "CheckedConfig",
    "CommandExecutor",
    "CommandQueue",
    "DesiredConfig",
    "Downlinks",
    "LogBudget",
]

ADDED_BY_CLOUD = "by the cloud"  # reason of children the cloud added or deleted itself
RESULTS = ("ok", "invalid", "failed")  # the outcomes `Downlinks.counts` counts
_STORAGE_ERRORS = (sqlite3.Error, OutboxFull, OSError)  # weather of the disk, not bugs
LOG_LINES_PER_MINUTE = 20  # lines about dropped downlinks; the rest are counted, then summed up

log = logging.getLogger(__name__)


class CommandExecutor(Protocol):
    """Runs a command on a device; returns (`done` or `error`, message)."""

    async def execute(self, device_id: str, name: str, parameters: Any) -> tuple[str, str]:
        """Run it; never raise for a refusal, answer `error` with the reason."""
        ...


@runtime_checkable
class CommandQueue(Protocol):
    """The command engine (`gatewayd.commands`): takes a claimed command, answers it itself."""

    async def submit(self, device_id: str, command_id: str, name: str, parameters: Any) -> None:
        """Queue it behind the device's earlier commands; returns without waiting for it."""
        ...


@dataclass(frozen=True, slots=True)
class CheckedConfig:
    """A config's fields sorted: those the device takes, and those refused with the reason.

    `refused` is shaped like the config: `{property: reason}` for a product with one service,
    `{service_id: {property: reason}}` (or `{service_id: reason}` for the whole object) for a
    product with several.
    """

    taken: dict[str, Any] = field(default_factory=dict)
    refused: dict[str, Any] = field(default_factory=dict)

    @property
    def applies(self) -> bool:
        """Whether the config is applied: a field was taken, or none was refused (empty)."""
        return bool(self.taken) or not self.refused


class DesiredConfig(Protocol):
    """Takes a config's valid fields into the device's desired state."""

    async def check_config(self, device_id: str, fields: dict[str, Any]) -> CheckedConfig:
        """Sort the fields against the device's product; nothing is applied yet."""
        ...

    async def apply_config(self, device_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Apply checked fields; what could not be applied after all, shaped like `refused`."""
        ...


class BuiltinCommands:
    """The commands the gateway answers by itself (`ping`); others are refused by name."""

    async def execute(self, device_id: str, name: str, parameters: Any) -> tuple[str, str]:
        """Answer `ping`; refuse anything else with a clear message."""
        del parameters
        if name == "ping":
            return "done", "pong"
        return "error", f"command {name!r} is not supported by {device_id}"


class LogBudget:
    """At most `lines` log lines per `window_s`.

    What it refuses is counted and reported once the next window opens, so the journal shows
    that a flood happened without holding it.

    Args:
        lines: lines allowed per window.
        window_s: the window.
        clock: monotonic time, injectable for tests.
    """

    def __init__(
        self,
        lines: int = LOG_LINES_PER_MINUTE,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lines = lines
        self._window_s = window_s
        self._clock = clock
        self._start = clock()
        self._used = 0
        self.suppressed = 0  # in the current window

    def allow(self) -> bool:
        """Whether one more line may be logged now."""
        now = self._clock()
        if now - self._start >= self._window_s:
            if self.suppressed:
                log.warning(
                    "%d log lines about downlinks left out in the last %.0f s "
                    "(gatewayd_downlinks_total in /metrics counts every downlink)",
                    self.suppressed,
                    now - self._start,
                )
            self._start, self._used, self.suppressed = now, 0, 0
        if self._used < self._lines:
            self._used += 1
            return True
        self.suppressed += 1
        return False


class Downlinks:
    """Handles downlinks for the gateway and its children.

    Args:
        gateway_id: the gateway's device id (children topics arrive under it).
        state: the downlink tables.
        outbox: where answers (`commands/update`, `license/update`) go.
        children: the configured children, to name refused ones.
        executor: runs commands: the engine (queued, answered by it) or an inline executor.
        desired: applies accepted config to desired state, if anything does.
    """

    def __init__(  # noqa: PLR0913, PLR0917 - every argument is an injected collaborator
        self,
        gateway_id: str,
        state: CloudState,
        outbox: Outbox,
        children: ChildrenSource,
        executor: CommandExecutor | CommandQueue,
        desired: DesiredConfig | None = None,
    ) -> None:
        self._desired = desired
        self._gateway_id = gateway_id
        self._state = state
        self._outbox = outbox
        self._children = children
        self._executor = executor
        self.counts = dict.fromkeys(RESULTS, 0)  # downlinks handled, by result
        self.log_budget = LogBudget()

    async def handle(self, topic: str, payload: bytes) -> None:
        """Validate and apply one downlink; never raises but for cancellation.

        A malformed downlink is counted `invalid`, one whose handling failed is `failed`;
        both are logged (within the log budget) and dropped.
        """
        try:
            await self._apply(native.decode(topic, payload))
        except native.DownlinkInvalid as exc:
            self.counts["invalid"] += 1
            if log.isEnabledFor(logging.WARNING) and self.log_budget.allow():
                log.warning(
                    "dropped a malformed downlink on %s (%d bytes): %s",
                    native.shown(topic),
                    len(payload),
                    exc,
                )
        except Exception as exc:  # storage, executor, a bug: this downlink's failure alone
            self.counts["failed"] += 1
            if self.log_budget.allow():
                log.error(  # noqa: TRY400 - a traceback only where it points at a bug
                    "downlink on %s (%d bytes) failed, dropped: %s: %s",
                    native.shown(topic),
                    len(payload),
                    type(exc).__name__,
                    exc,
                    exc_info=None if isinstance(exc, _STORAGE_ERRORS) else exc,
                )
        else:
            self.counts["ok"] += 1

    async def _apply(self, message: native.Downlink) -> None:
        body = message.body
        device = message.device_id
        if isinstance(body, native.ConfigDown):
            await self._config(device, body)
        elif isinstance(body, native.CommandDown):
            await self._command(device, body)
        elif isinstance(body, native.LicenseDown):
            await self._license(device, body)
        elif isinstance(body, native.SpaceInfoDown | native.FirmwareDown):
            await self._state.put_info(device, message.kind, body.model_dump(exclude_none=True))
        elif isinstance(body, native.ChildrenAddResponse):
            await self._added(body)
        elif isinstance(body, native.ChildrenDeleteResponse):
            for device_id in body.successful_devices:
                await self._state.set_child(device_id, "deleted")
        elif isinstance(body, native.ChildrenNotify):
            await self._notify(body)

    async def _config(self, device: str, body: native.ConfigDown) -> None:
        version = native.shown(body.version)
        if not await self._state.see_config(device, body.version):
            self._note(logging.INFO, "%s: config version %s ignored (not newer)", device, version)
            return
        fields = body.fields()
        checked = (
            CheckedConfig(fields)
            if self._desired is None
            else await self._desired.check_config(device, fields)
        )
        refused = dict(checked.refused)
        if checked.applies:
            previous = await self._state.desired_config(device)
            await self._state.accept_config(
                device, body.version, body.last_updated, checked.taken,
                sent_version=body.sent_version,
            )  # fmt: skip
            try:
                failed = (
                    await self._desired.apply_config(device, checked.taken)
                    if self._desired is not None and checked.taken
                    else {}
                )
            except Exception:  # the disk, a bug: as if it never came, so a redelivery applies
                with contextlib.suppress(*_STORAGE_ERRORS):
                    await self._state.restore_config(device, previous, unsee=body.version)
                raise
            if failed:  # nothing of it was applied after all: the applied version stays
                await self._state.restore_config(device, previous)
                for key, why in failed.items():
                    had = refused.get(key)
                    # One service of several: its own refusals, and these.
                    both = isinstance(had, dict) and isinstance(why, dict)
                    refused[key] = {**had, **why} if both and had is not None else why
            else:
                self._note(logging.INFO, "%s: desired config version %s applied (%d field(s))",
                           device, version, len(checked.taken))  # fmt: skip
        if refused:
            self._note(logging.WARNING, "%s: config version %s: refused %s", device, version,
                       native.shown(str(refused)))  # fmt: skip
            answer = {
                "version": body.sent_version,
                "last_updated": native.iso_timestamp(datetime.now(UTC)),
                "refused": refused,
            }
            await self._answer(device, "config/update", native.encode_json(answer))

    async def _command(self, device: str, body: native.CommandDown) -> None:
        if body.status != "pending":
            self._note(logging.DEBUG, "%s: command %r with status %s ignored", device, body.id,
                       native.shown(body.status))  # fmt: skip
            return
        if not await self._state.claim_command(device, body.id, body.name, body.parameters):
            self._note(logging.INFO, "%s: command %r redelivered: not executed again", device,
                       body.id)  # fmt: skip
            return
        if isinstance(self._executor, CommandQueue):
            await self._executor.submit(device, body.id, body.name, body.parameters)
            return
        await self._command_status(device, body.id, "in_progress", "")
        try:
            status, message = await self._executor.execute(device, body.name, body.parameters)
        except Exception as exc:
            # Claimed, so never run again: the cloud hears that it failed, then the log does.
            failure = f"the gateway failed to run it ({type(exc).__name__})"
            await self._command_status(device, body.id, "error", failure)
            raise
        await self._command_status(device, body.id, status, message)

    async def _command_status(self, device: str, command_id: str, status: str, msg: str) -> None:
        await self._state.set_command_status(command_id, status, msg)
        await self._answer(
            device, "commands/update", native.command_update(command_id, status, msg)
        )

    async def _license(self, device: str, body: native.LicenseDown) -> None:
        if body.remove:
            state, error = "removed", ""
        elif body.add or body.update:
            state, error = "inuse", ""
        else:
            state, error = "error", "none of add, update or remove is set"
        await self._state.put_license(device, body.id, body.model_dump(), state)
        await self._answer(device, "license/update", native.license_update(body.id, state, error))

    async def _added(self, body: native.ChildrenAddResponse) -> None:
        for added in body.successful_devices:
            await self._state.set_child(added.device_id, "registered", access_key=added.access_key)
        for failed in body.failed_devices:
            device_id = failed.device_id or self._find(failed.node_id, failed.product_id)
            if device_id is None:
                self._note(logging.WARNING, "cloud refused an unknown child: %s",
                           native.shown(str(failed.model_dump())))  # fmt: skip
                continue
            reason = f"{failed.error_code}: {failed.error_msg}".strip(": ")
            self._note(logging.WARNING, "cloud refused child %s: %s", native.shown(device_id),
                       native.shown(reason))  # fmt: skip
            await self._state.set_child(device_id, "refused", reason)

    async def _notify(self, body: native.ChildrenNotify) -> None:
        for device in body.devices:
            state = "registered" if body.event == "add" else "deleted"
            await self._state.set_child(device.device_id, state, ADDED_BY_CLOUD)
        await self._state.set_meta("children_notify_version", str(body.version))

    def _note(self, level: int, msg: str, *args: object) -> None:
        """A log line about one downlink, within the budget a flood cannot exceed."""
        if log.isEnabledFor(level) and self.log_budget.allow():
            log.log(level, msg, *args)

    def _find(self, node_id: str | None, product_id: str | None) -> str | None:
        matches: Sequence[Child] = [
            c
            for c in self._children.children()
            if c.node_id == node_id and (product_id is None or c.product_id == product_id)
        ]
        return matches[0].device_id if matches else None

    async def _answer(self, device: str, kind: str, payload: bytes) -> None:
        try:
            await self._outbox.append(device, kind, payload)
        except OutboxFull as exc:
            self._note(logging.ERROR, "%s: %s answer not queued: %s", device, kind, exc)
