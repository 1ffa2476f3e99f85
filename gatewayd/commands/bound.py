"""Commands a site bound to point writes in the device's YAML (`commands:` beside `points:`).

Each write goes through the connection's runner like desired state (`write_confirmed`: ahead
of polls, then read back), so the response reports what the device holds, not what was asked.
The binding model is the driver contract's (`gatewayd.driver.CommandBinding`): any driver
whose points are writable runs the same steps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from gatewayd.commands.params import CommandRefused
from gatewayd.driver import CommandBinding, CommandStep, ConnectionConfig
from gatewayd.errors import TransientError, WriteRejected
from gatewayd.model import Reading, Value

__all__ = ["Bindings", "BoundCommand", "Outcome", "PointWriter"]

Outcome = tuple[str, str, dict[str, Any]]
"""(status, message, response fields)."""


class PointWriter(Protocol):
    """A connection's single owner (`ConnectionRunner`)."""

    async def write_confirmed(self, device_id: str, point_id: str, value: Value) -> Reading:
        """Write, then read back."""
        ...


class BoundCommand:
    """One declared command bound to one device's point writes.

    Args:
        writer: the runner of the device's connection.
        device: the device's key on that connection.
        binding: the steps and responses from the YAML.
    """

    def __init__(self, writer: PointWriter, device: str, binding: CommandBinding) -> None:
        self._writer = writer
        self._device = device
        self._binding = binding
        self.timeout_s = binding.timeout_s

    async def run(self, parameters: Mapping[str, Any]) -> Outcome:
        """Run the steps in order; a refused or unanswered write ends it `error`, named."""
        read_back: dict[str, Any] = {}
        for step in self._binding.steps:
            if step.write is None:
                await asyncio.sleep(_seconds(step, parameters))
                continue
            value = step.value if step.parameter is None else _param(step.parameter, parameters)
            try:
                reading = await self._writer.write_confirmed(self._device, step.write, value)
            except (WriteRejected, TransientError) as exc:
                return "error", f"write {step.write}: {exc}", {}
            read_back[step.write] = reading.value
        response = {name: read_back[point] for name, point in self._binding.responses.items()}
        return "done", "", response


def _param(name: str, parameters: Mapping[str, Any]) -> Any:
    if name not in parameters:
        msg = f"parameter {name!r} is required by the command's binding"
        raise CommandRefused(msg)
    return parameters[name]


def _seconds(step: CommandStep, parameters: Mapping[str, Any]) -> float:
    if step.wait_s is not None:
        return step.wait_s
    assert step.wait_parameter is not None
    value = _param(step.wait_parameter, parameters)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 3600:
        msg = f"parameter {step.wait_parameter!r}: a wait of 0 to 3600 s, not {value!r}"
        raise CommandRefused(msg)
    return float(value)


class Bindings:
    """Every configured device's bound commands, by registry device id and command name.

    Args:
        connections: the configured connections.
        writers: each connection's runner, by connection id.
        device_id: the registry id of a configured device (connection and device keys).
    """

    def __init__(
        self,
        connections: Mapping[str, ConnectionConfig],
        writers: Mapping[str, PointWriter],
        device_id: Callable[[str, str], str | None],
    ) -> None:
        self._bound: dict[tuple[str, str], BoundCommand] = {}
        for conn_id, connection in connections.items():
            writer = writers.get(conn_id)
            if writer is None:
                continue
            for key, device in getattr(connection, "devices", {}).items():
                registry_id = device_id(conn_id, key)
                if registry_id is None:
                    continue
                for name, binding in device.commands.items():
                    self._bound[registry_id, name] = BoundCommand(writer, key, binding)

    def get(self, device_id: str, name: str) -> BoundCommand | None:
        """The binding of `name` on the device, if the site bound it."""
        return self._bound.get((device_id, name))
