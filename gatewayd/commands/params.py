"""A command's parameters checked against what its product declares, before anything runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gatewayd.products import CommandDef, Product

__all__ = ["CommandRefused", "check_parameters", "find_command"]


class CommandRefused(Exception):
    """A command that will not run; the message names the command or the parameter."""


def find_command(product: Product | None, name: str, device_id: str) -> CommandDef:
    """The declaration of `name` in the device's product, or a refusal naming it."""
    if product is not None:
        for service in product.services:
            for command in service.commands:
                if command.name == name:
                    return command
    msg = f"command {name!r} is not supported by {device_id}"
    raise CommandRefused(msg)


def check_parameters(command: CommandDef, parameters: Any) -> dict[str, Any]:
    """The parameters in their checked form; a refusal naming the first one that is wrong.

    A declared parameter without a `default` is required; one the product does not declare
    is refused, so a typo is never silently ignored.
    """
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, Mapping):
        msg = "parameters: must be an object"
        raise CommandRefused(msg)
    declared = {p.name: p for p in command.paras}
    for key in parameters:
        if key not in declared:
            msg = f"parameter {str(key)[:64]!r} is not declared by command {command.name!r}"
            raise CommandRefused(msg)
    checked: dict[str, Any] = {}
    for name, para in declared.items():
        if name not in parameters:
            if para.default is None:
                msg = f"parameter {name!r} is required"
                raise CommandRefused(msg)
            checked[name] = para.default
            continue
        try:
            checked[name] = para.check(parameters[name])
        except ValueError as exc:
            msg = f"parameter {name!r}: {exc}"
            raise CommandRefused(msg) from None
    return checked
