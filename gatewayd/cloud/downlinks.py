"""What the gateway does with each validated downlink of the native dialect.

Desired config, licenses, space info and firmware info are stored per device; commands are
claimed by id (a redelivered id is never executed again) and answered on `commands/update`
through the outbox; children responses update the children's registration state. A malformed
downlink is logged and dropped: it never ends the link.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from gatewayd.cloud.children import Child, ChildrenSource
from gatewayd.cloud.dialects import native
from gatewayd.store.cloud_state import CloudState
from gatewayd.store.outbox import Outbox, OutboxFull

__all__ = ["ADDED_BY_CLOUD", "BuiltinCommands", "CommandExecutor", "DesiredConfig", "Downlinks"]

ADDED_BY_CLOUD = "by the cloud"  # reason of children the cloud added or deleted itself

log = logging.getLogger(__name__)


class CommandExecutor(Protocol):
    """Runs a command on a device; returns (`done` or `error`, message)."""

    async def execute(self, device_id: str, name: str, parameters: Any) -> tuple[str, str]:
        """Run it; never raise for a refusal, answer `error` with the reason."""
        ...


class DesiredConfig(Protocol):
    """Applies an accepted desired config to the device's desired state."""

    async def apply_config(self, device_id: str, fields: dict[str, Any]) -> None:
        """Apply it; never raise for a bad field, log it."""
        ...


class BuiltinCommands:
    """The commands the gateway answers by itself (`ping`); others are refused by name."""

    async def execute(self, device_id: str, name: str, parameters: Any) -> tuple[str, str]:
        """Answer `ping`; refuse anything else with a clear message."""
        del parameters
        if name == "ping":
            return "done", "pong"
        return "error", f"command {name!r} is not supported by {device_id}"


class Downlinks:
    """Handles downlinks for the gateway and its children.

    Args:
        gateway_id: the gateway's device id (children topics arrive under it).
        state: the downlink tables.
        outbox: where answers (`commands/update`, `license/update`) go.
        children: the configured children, to name refused ones.
        executor: runs commands.
        desired: applies accepted config to desired state, if anything does.
    """

    def __init__(  # noqa: PLR0913, PLR0917 - every argument is an injected collaborator
        self,
        gateway_id: str,
        state: CloudState,
        outbox: Outbox,
        children: ChildrenSource,
        executor: CommandExecutor,
        desired: DesiredConfig | None = None,
    ) -> None:
        self._desired = desired
        self._gateway_id = gateway_id
        self._state = state
        self._outbox = outbox
        self._children = children
        self._executor = executor

    async def handle(self, topic: str, payload: bytes) -> None:
        """Validate and apply one downlink; a malformed one is logged and dropped."""
        try:
            message = native.decode(topic, payload)
        except native.DownlinkInvalid as exc:
            log.warning("dropped a malformed downlink: %s", exc)
            return
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
        accepted = await self._state.accept_config(
            device, body.version, body.last_updated, body.fields()
        )
        if accepted:
            log.info("%s: desired config version %s stored", device, body.version)
            if self._desired is not None:
                await self._desired.apply_config(device, body.fields())
        else:
            log.info("%s: config version %s ignored (not newer)", device, body.version)

    async def _command(self, device: str, body: native.CommandDown) -> None:
        if body.status != "pending":
            log.debug("%s: command %s with status %s ignored", device, body.id, body.status)
            return
        if not await self._state.claim_command(device, body.id, body.name, body.parameters):
            log.info("%s: command %s redelivered: not executed again", device, body.id)
            return
        await self._command_status(device, body.id, "in_progress", "")
        status, message = await self._executor.execute(device, body.name, body.parameters)
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
                log.warning("cloud refused an unknown child: %s", failed.model_dump())
                continue
            reason = f"{failed.error_code}: {failed.error_msg}".strip(": ")
            log.warning("cloud refused child %s: %s", device_id, reason)
            await self._state.set_child(device_id, "refused", reason)

    async def _notify(self, body: native.ChildrenNotify) -> None:
        for device in body.devices:
            state = "registered" if body.event == "add" else "deleted"
            await self._state.set_child(device.device_id, state, ADDED_BY_CLOUD)
        await self._state.set_meta("children_notify_version", str(body.version))

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
            log.error("%s: %s answer not queued: %s", device, kind, exc)  # noqa: TRY400
