"""Command line: run, check-config, print-schema, demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from gatewayd import __version__
from gatewayd.config_load import InvalidConfig, load_settings
from gatewayd.errors import ConfigError
from gatewayd.logs import setup_logging
from gatewayd.products import ProductError, load_products
from gatewayd.settings import Settings

__all__ = ["EX_CONFIG", "main"]

EX_CONFIG = 78  # sysexits.h; the unit sets RestartPreventExitStatus=78
DEFAULT_CONFIG = Path("/etc/gatewayd/gatewayd.yaml")

log = logging.getLogger("gatewayd")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `gatewayd` command."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "print-schema":
        print(json.dumps(Settings.model_json_schema(), indent=2))  # noqa: T201
        return 0
    if args.command == "demo":
        from gatewayd.demo import run_demo  # noqa: PLC0415 - only the demo needs its imports

        return run_demo()
    try:
        settings = load_settings(args.config)
        load_products(settings.products)
    except (InvalidConfig, ProductError) as exc:
        _print_problems(args.config, [str(p) for p in exc.problems])
        return EX_CONFIG
    if args.command == "check-config":
        print(f"{args.config}: configuration OK")  # noqa: T201
        return 0
    return _run(settings)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatewayd", description="IoT gateway daemon")
    parser.add_argument("--version", action="version", version=f"gatewayd {__version__}")
    sub = parser.add_subparsers(dest="command")
    for name, text in (
        ("run", "run the daemon"),
        ("check-config", "validate the configuration and exit (78 when invalid)"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG)
    sub.add_parser("print-schema", help="print the configuration's JSON schema")
    sub.add_parser("demo", help="run a local broker, a simulated device and the daemon")
    return parser


def _print_problems(path: Path, problems: list[str]) -> None:
    print(f"gatewayd: {path}: invalid configuration:", file=sys.stderr)  # noqa: T201
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)  # noqa: T201


def _run(settings: Settings) -> int:
    setup_logging(settings.logging)
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(_serve(settings))
    except (ConfigError, BaseExceptionGroup) as exc:
        problems = _config_errors(exc)
        if not problems:
            raise
        for problem in problems:
            log.error("%s", problem)  # noqa: TRY400 - a config problem needs no traceback
        return EX_CONFIG
    return 0


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Uvloop's event loop where it is installed, else asyncio's own (None).

    The daemon's work is thousands of small socket reads, writes and timers a second
    (Modbus requests, MQTT publishes and PUBACKs); uvloop does that bookkeeping in C. Measured
    on the Modbus end-to-end benchmark: 20 % less CPU for the field half (docs/decisions.md).
    """
    try:
        import uvloop  # noqa: PLC0415 - optional at run time; a dependency of the package
    except ImportError:  # pragma: no cover - a source checkout without it still runs
        log.info("uvloop is not installed: running on asyncio's own event loop")
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _config_errors(exc: BaseException) -> list[ConfigError]:
    """The ConfigErrors in `exc`, or [] when anything else is in it too (that is a bug)."""
    if isinstance(exc, ConfigError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        found = [e for sub in exc.exceptions for e in _config_errors(sub)]
        return found if len(found) == len(exc.exceptions) else []
    return []


async def _serve(settings: Settings) -> None:
    from gatewayd.app import App, install_signal_handlers  # noqa: PLC0415 - after logging set-up

    app = App(settings)
    install_signal_handlers(app)
    await app.run()
