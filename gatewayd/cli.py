"""Command line: run, check-config, print-schema, demo.

Exit statuses of `gatewayd run` (docs/operations.md, "Exit statuses"): 0 after SIGTERM or
SIGINT; 78 for an invalid configuration; a `StartupError`'s own status for a start that failed
for a reason that is not a bug (69 the API cannot listen, 75 another daemon holds the state
directory, 77 a state file this user may not use), each with one log line and no traceback;
1 for a bug, with its traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from gatewayd import __version__
from gatewayd.config_load import InvalidConfig, load_config, load_settings
from gatewayd.errors import EX_CONFIG, ConfigError, StartupError
from gatewayd.logs import setup_logging
from gatewayd.products import ProductError, load_products
from gatewayd.settings import Settings

__all__ = ["EX_CONFIG", "main", "startup_errors"]

EX_BROKEN_PIPE = 141  # the shell's status for a command whose reader went away (SIGPIPE)
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
        return _print_quietly(json.dumps(Settings.model_json_schema(), indent=2) + "\n")
    if args.command == "demo":
        from gatewayd.demo import run_demo  # noqa: PLC0415 - only the demo needs its imports

        return run_demo()
    if args.command == "run":
        # SIGINT does what SIGTERM does until the loop takes both over: it ends the process
        # (no KeyboardInterrupt traceback from the middle of an import).
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        settings = load_settings(args.config)
        load_products(settings.products)
    except (InvalidConfig, ProductError) as exc:
        _print_problems(args.config, [str(p) for p in exc.problems])
        return EX_CONFIG
    if args.command == "check-config":
        return _check_config(args.config, strict=args.strict)
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
        if name == "check-config":
            cmd.add_argument(
                "--strict", action="store_true", help="warnings are errors too (exit 78)"
            )
    sub.add_parser("print-schema", help="print the configuration's JSON schema")
    sub.add_parser("demo", help="run a local broker, a simulated device and the daemon")
    return parser


def _check_config(path: Path, *, strict: bool) -> int:
    """Warnings (devices and points no product file describes) go to stderr; strict: 78."""
    loaded = load_config(path)  # valid: main() loaded it already
    warnings = [str(w) for w in loaded.product_warnings(load_products(loaded.settings.products))]
    if warnings and strict:
        _print_problems(path, warnings)
        return EX_CONFIG
    for warning in warnings:
        print(f"gatewayd: warning: {warning}", file=sys.stderr)  # noqa: T201
    print(f"{path}: configuration OK")  # noqa: T201
    return 0


def _print_quietly(text: str) -> int:
    """Write to stdout; a reader that stops early (`| head`) ends the command quietly.

    Returns:
        0, or 141 (128 + SIGPIPE, what a shell reports for a command its pipe closed).
    """
    try:
        sys.stdout.flush()
        out = sys.stdout.buffer
        data = memoryview(text.encode())
        while data:  # unbuffered (python -u), one write may take part of it and say so
            data = data[out.write(data) :]
        out.flush()
    except BrokenPipeError:
        # stdout's buffer would fail again when Python flushes it at exit: point it elsewhere
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EX_BROKEN_PIPE
    return 0


def _print_problems(path: Path, problems: list[str]) -> None:
    print(f"gatewayd: {path}: invalid configuration:", file=sys.stderr)  # noqa: T201
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)  # noqa: T201


def _run(settings: Settings) -> int:
    setup_logging(settings.logging)
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(_serve(settings))
    except (ConfigError, StartupError, BaseExceptionGroup) as exc:
        problems = startup_errors(exc)
        if not problems:
            raise
        for problem in problems:
            log.error("cannot start: %s", problem)  # noqa: TRY400 - a reason, not a bug
        return _status(problems[0])
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


def startup_errors(exc: BaseException) -> list[ConfigError | StartupError]:
    """The reasons a start failed in `exc` (nested groups included), or [] for a bug.

    Anything else in `exc`, alongside them or alone, is a bug: its traceback is worth more
    than the reasons, and the daemon exits 1.
    """
    if isinstance(exc, ConfigError | StartupError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        found: list[ConfigError | StartupError] = []
        for sub in exc.exceptions:
            reasons = startup_errors(sub)
            if not reasons:
                return []
            found += reasons
        return found
    return []


def _status(exc: ConfigError | StartupError) -> int:
    return exc.exit_status if isinstance(exc, StartupError) else EX_CONFIG


class _EarlyStop:
    """SIGTERM and SIGINT, taken over by the loop before anything slow (imports, stores).

    Without it, a signal during the second the daemon's modules take to import would meet
    the default action and end the process there. The loop handles a signal when it next
    runs, with the handler registered by then: the daemon's own, which stops it before it
    opens anything or as soon as it has. `requested` covers a loop that called this one first.
    """

    def __init__(self) -> None:
        self.requested = False
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request)
        loop.add_signal_handler(signal.SIGINT, self.request)

    def request(self) -> None:
        self.requested = True


class _UnwaitedExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor: each call on a daemon thread that the exit never waits for.

    Its one user is aiomqtt's connect (paho's blocking name lookup, TCP connect and TLS
    handshake, each bounded only by paho's own 5 s or the resolver's timeouts). A pool's
    threads are joined when the loop closes and again when the interpreter exits, so a stop
    that came during a connect to a host that drops SYNs, or while the resolver waited on an
    unreachable DNS server, waited that long after the daemon had stopped. Nothing in such a
    call is worth waiting for: the daemon's state is written by the stores, on their own
    threads, before the loop closes.
    """

    def submit(  # type: ignore[override]
        self, fn: Callable[..., object], /, *args: object, **kwargs: object
    ) -> concurrent.futures.Future[object]:
        future: concurrent.futures.Future[object] = concurrent.futures.Future()

        def call() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
                future.set_exception(exc)
            else:
                future.set_result(result)

        threading.Thread(target=call, name="gatewayd-blocking-call", daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing to wait for (see the class)."""


async def _serve(settings: Settings) -> None:
    early = _EarlyStop()
    log.info("gatewayd %s starting (pid %d)", __version__, os.getpid())
    asyncio.get_running_loop().set_default_executor(_UnwaitedExecutor(max_workers=1))
    from gatewayd.app import App, install_signal_handlers  # noqa: PLC0415 - after logging set-up

    app = App(settings)
    install_signal_handlers(app)
    if early.requested:
        app.request_stop()
    await app.run()
