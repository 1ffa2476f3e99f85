"""Configurations that must be refused: `check-config` and `run` both exit 78, at once.

Each case is a file (or an environment variable) a user could write by mistake, or one
written to hurt (alias bombs, recursive anchors): both commands run as real processes and
must exit 78 with the file (or variable), the line and the key path, without a traceback and
well inside the bound of one process start.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import ROOT, daemon_env

BASE = "gateway: {node_id: gw1}\nstate_dir: state\napi: {port: 0}\n"  # lines 1-3
PROCESS_BOUND_S = 10.0  # one interpreter start and a refusal, on a loaded CI machine


def _laughs(open_: str, close: str, item: str) -> str:
    """Nine levels of ten aliases each: a billion values once expanded."""
    items = ", ".join(item.format(i) for i in range(10))
    lines = [f"l0: &l0 {open_}{items}{close}"]
    for level in range(1, 10):
        if open_ == "{":
            body = ", ".join(f"k{i}: *l{level - 1}" for i in range(10))
        else:
            body = ", ".join([f"*l{level - 1}"] * 10)
        lines.append(f"l{level}: &l{level} {open_}{body}{close}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Case:
    text: str | bytes
    expect: list[str]  # fragments of stderr; FILE is replaced by the main file's path
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # more files, relative to tmp_path


MEMORY = "connections:\n  c:\n    driver: memory\n    devices:\n"  # lines 4-7

CASES = {
    "duplicate-section": Case(
        BASE + "cloud: {}\napi: {host: 0.0.0.0}\n",
        ["FILE: api: duplicate key (first at line 3)", "(line 5)"],
    ),
    "duplicate-device": Case(
        BASE + MEMORY + "      d1: {interval_s: 1}\n      d2: {}\n      d1: {interval_s: 2}\n",
        ["FILE: connections.c.devices.d1: duplicate key (first at line 8)", "(line 10)"],
    ),
    "same-modbus-device-in-two-connections": Case(
        BASE
        + "connections:\n"
        + "  a: {driver: modbus-tcp, host: 127.0.0.1, port: 1502,\n"
        + "      devices: {m1: {unit_id: 3, points: {x: {address: 0}}}}}\n"
        + "  b:\n    driver: modbus-tcp\n    host: 127.0.0.1\n    port: 1502\n"
        + "    devices:\n      m2: {unit_id: 3, points: {y: {address: 1}}}\n",
        [
            (
                "FILE: connections.b.devices.m2: the same device (127.0.0.1:1502 unit 3) as "
                "connections.a.devices.m1"
            ),
            "(line 12)",
        ],
    ),
    "same-device-id-in-two-connections": Case(
        BASE
        + "connections:\n"
        + "  a: {driver: memory, devices: {room: {}}}\n"
        + "  b: {driver: memory, devices: {room: {}}}\n",
        ["FILE: connections.b.devices.room: device id 'memory_room' is also", "(line 6)"],
    ),
    "dialect-iotda": Case(
        BASE + "cloud:\n  dialect: iotda\n",
        ["FILE: cloud.dialect: 'iotda' is not supported (supported: native) (line 5)"],
    ),
    "dialect-thingsboard-from-conf-d": Case(
        BASE,
        ["conf.d/50-cloud.yaml: cloud.dialect: 'thingsboard' is not supported", "(line 2)"],
        files={"conf.d/50-cloud.yaml": "cloud:\n  dialect: thingsboard\n"},
    ),
    "interval-1e-7": Case(
        BASE + MEMORY + "      d1:\n        interval_s: 1e-7\n",
        [
            (
                "FILE: connections.c.devices.d1.interval_s: Input should be greater than or equal "
                "to 0.001 (line 9)"
            )
        ],
    ),
    "state-dir-is-a-file": Case(
        BASE,
        ["FILE: state_dir: ", "state is a file, not a directory (line 2)"],
        files={"state": "not a directory\n"},
    ),
    "unknown-environment-variable": Case(
        BASE,
        ["environment GATEWAYD_NOSUCH__X: nosuch.x: no such setting"],
        env={"GATEWAYD_NOSUCH__X": "1"},
    ),
    "environment-section-not-json": Case(
        BASE,
        ["environment GATEWAYD_CONNECTIONS: connections: ", "this is not JSON"],
        env={"GATEWAYD_CONNECTIONS": "{not json"},
    ),
    "billion-laughs-mappings": Case(
        BASE + _laughs("{", "}", "a{}: lol"),
        ["FILE: l5.k", "the document grows past 200,000 values", "(line 9)"],
    ),
    "billion-laughs-lists": Case(
        BASE + _laughs("[", "]", "lol{}"),
        ["FILE: l5.", "the document grows past 200,000 values", "(line 9)"],
    ),
    "recursive-anchor": Case(
        BASE + "a: &a {self: *a}\n",
        ["FILE: a.self: an alias refers to a value that contains it", "(line 4)"],
    ),
    "integer-key": Case(
        BASE + "1: one\n",
        ["FILE: 1: key '1' is read as int: a key must be a name (quote it) (line 4)"],
    ),
    "byte-not-utf8": Case(
        BASE.encode() + MEMORY.encode() + b"      d1: {name: caf\xe9}\n",
        ["FILE: connections.c.devices.d1.name: byte 0xe9 at column 21 is not UTF-8", "(line 8)"],
    ),
    "integer-of-5000-digits": Case(
        BASE + "outbox:\n  max_bytes: " + "9" * 5000 + "\n",
        ["FILE: outbox.max_bytes: an integer of 5,000 characters is out of range (line 5)"],
    ),
    "nested-10000-deep": Case(
        BASE + "x: " + "[" * 10_000 + "]" * 10_000 + "\n",
        ["FILE: x.0.0.0", "nested deeper than 64 levels (line 4)"],
    ),
}


def _write(tmp_path: Path, case: Case) -> Path:
    main = tmp_path / "gatewayd.yaml"
    if isinstance(case.text, bytes):
        main.write_bytes(case.text)
    else:
        main.write_text(case.text)
    for name, text in case.files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return main


def _both(main: Path, env: dict[str, str], *extra: str) -> dict[str, tuple[int, str, float]]:
    """Run check-config and run side by side; (status, stderr, seconds) of each."""
    started = time.monotonic()
    procs = {
        command: subprocess.Popen(
            [sys.executable, "-m", "gatewayd", command, "-c", str(main), *extra],
            env=daemon_env(**env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for command in ("check-config", "run")
    }
    out = {}
    for command, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=PROCESS_BOUND_S * 2)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"{command} did not end: {err[-2000:]}")
        out[command] = (proc.returncode, err, time.monotonic() - started)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_refused_by_check_config_and_run(tmp_path, name):
    case = CASES[name]
    main = _write(tmp_path, case)
    for command, (status, err, seconds) in _both(main, case.env).items():
        assert status == 78, f"{command}: {status}\n{err}"
        assert "Traceback" not in err, f"{command}:\n{err}"
        for expected in case.expect:
            fragment = expected.replace("FILE", str(main))
            assert fragment in err, f"{command}: {fragment!r} not in\n{err}"
        assert len(err) < 2000, f"{command}: {len(err)} characters of output"
        assert seconds < PROCESS_BOUND_S, f"{command} took {seconds:.1f} s"
        assert not (tmp_path / "state").is_dir(), f"{command} created the state directory"


PRODUCT = """\
product_id: thermostat
name: Thermostat
services:
  - service_id: climate
    properties:
      - {name: temperature, type: decimal}
"""

SITE = (
    BASE
    + "products: products\n"  # line 4
    + MEMORY  # lines 5-8
    + "      room: {product_id: thermostat, points: {temperature: {}, humidity: {}}}\n"  # 9
    + "      hall: {product_id: boiler, points: {t: {}}}\n"  # 10
)


def test_product_gaps_are_warnings_and_strict_makes_them_errors(tmp_path):
    main = tmp_path / "gatewayd.yaml"
    main.write_text(SITE)
    (tmp_path / "products").mkdir()
    (tmp_path / "products" / "thermostat.yaml").write_text(PRODUCT)
    expect = [
        (
            f"{main}: connections.c.devices.room.points.humidity: 'humidity' is not a property "
            "of product 'thermostat' (line 9)"
        ),
        (
            f"{main}: connections.c.devices.hall.product_id: product 'boiler' has no product file "
            f"in {tmp_path / 'products'} (line 10)"
        ),
    ]
    env = daemon_env()
    loose = subprocess.run(
        [sys.executable, "-m", "gatewayd", "check-config", "-c", str(main)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    strict = subprocess.run(
        [sys.executable, "-m", "gatewayd", "check-config", "--strict", "-c", str(main)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert loose.returncode == 0, loose.stderr
    assert "configuration OK" in loose.stdout
    assert strict.returncode == 78, strict.stderr
    assert "configuration OK" not in strict.stdout
    for fragment in expect:
        assert f"warning: {fragment}" in loose.stderr, loose.stderr
        assert fragment in strict.stderr, strict.stderr
    assert "temperature" not in loose.stderr  # a property of its product: no warning


@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_print_schema_into_a_closed_pipe_ends_quietly(unbuffered):
    """`gatewayd print-schema | head`: the reader goes away after one line.

    Both with Python's buffered stdout (the usual case, where the old code raised
    BrokenPipeError) and unbuffered (PYTHONUNBUFFERED, where one write may take only part).
    """
    env = daemon_env()
    env.pop("PYTHONUNBUFFERED", None)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = unbuffered
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # the schema is far bigger: EPIPE is sure
    proc = subprocess.Popen(
        [sys.executable, "-m", "gatewayd", "print-schema"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        assert reader.readline() == b"{\n"
    _, err = proc.communicate(timeout=30)
    assert (proc.returncode, err) == (141, "")
