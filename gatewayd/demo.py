"""`gatewayd demo`: a broker, a simulated field device and the daemon, on loopback only.

Everything runs from a temporary directory and stops on Ctrl-C; nothing is installed and
nothing outside the temporary directory is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

__all__ = ["run_demo"]

DEMO_DIR = Path(__file__).resolve().parent.parent / "config" / "demo"
DEMO_TOKEN = "demo-admin-token"  # noqa: S105 - published on purpose; hashed in the demo config
METER = "demo-meter_energy-meter"  # {product_id}_{node_id} of the demo's Modbus meter


def run_demo() -> int:
    """Run the demo until Ctrl-C; returns the exit status."""
    if shutil.which("mosquitto") is None:
        print("gatewayd demo: mosquitto is not installed (apt-get install mosquitto)")  # noqa: T201
        return 1
    if not (DEMO_DIR / "gatewayd.yaml").is_file():
        print(f"gatewayd demo: {DEMO_DIR}/gatewayd.yaml not found (run from a checkout)")  # noqa: T201
        return 1
    try:
        return asyncio.run(_demo())
    except KeyboardInterrupt:
        return 0


async def _demo() -> int:
    with tempfile.TemporaryDirectory(prefix="gatewayd-demo-") as tmp:
        work = Path(tmp)
        broker_port, api_port, modbus_port = _free_port(), _free_port(), _free_port()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with (
            _mosquitto(work, broker_port),
            _modbus_simulator(modbus_port),
            _daemon(work, broker_port, api_port, modbus_port) as daemon,
        ):
            print(_guide(broker_port, api_port, modbus_port), flush=True)  # noqa: T201
            waiter = asyncio.create_task(stop.wait())
            exited = asyncio.create_task(daemon.wait())
            await asyncio.wait({waiter, exited}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            exited.cancel()
        return 0


def _guide(broker_port: int, api_port: int, modbus_port: int) -> str:
    api = f"http://127.0.0.1:{api_port}"
    shadow = f"{api}/v5/iot/local/devices/{METER}/shadow"
    auth = f"-H 'X-Auth-Token: {DEMO_TOKEN}'"
    desired = '{"shadow":[{"service_id":"Meter","desired":{"power_limit":3500}}]}'
    config = '{"version":1,"power_limit":2500}'
    return (
        "\ngatewayd demo is running (Ctrl-C stops everything)\n\n"
        "Watch what the gateway sends to the cloud:\n"
        f"  mosquitto_sub -h 127.0.0.1 -p {broker_port} -t 'v1/#' -v\n\n"
        "Health and the meter's shadow (desired vs reported):\n"
        f"  curl {api}/healthz\n"
        f"  curl {auth} {shadow}\n\n"
        "Change the meter's power limit locally; the gateway writes register 5 of the\n"
        "simulated meter, reads it back, then reports it:\n"
        f"  curl {auth} -X PUT -H 'Content-Type: application/json' -d '{desired}' {shadow}\n\n"
        "Or as the cloud would, over MQTT (answered on .../config/update):\n"
        f"  mosquitto_pub -h 127.0.0.1 -p {broker_port} -q 1 "
        f"-t v1/device/{METER}/config -m '{config}'\n\n"
        f"Modbus simulator: 127.0.0.1:{modbus_port} (unit 1, holding registers 0-5)\n"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def _mosquitto(work: Path, port: int) -> AsyncIterator[None]:
    conf = work / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "set_tcp_nodelay true\nmax_queued_messages 0\nlog_dest none\n"
    )
    proc = await asyncio.create_subprocess_exec(
        "mosquitto", "-c", str(conf),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await _wait_port(port)
        yield
    finally:
        await _stop(proc)


@contextlib.asynccontextmanager
async def _modbus_simulator(port: int) -> AsyncIterator[None]:
    from pymodbus.server import ModbusTcpServer  # noqa: PLC0415 - demo only
    from pymodbus.simulator import DataType, SimData, SimDevice  # noqa: PLC0415

    # A small energy meter (see the `meter` connection in config/demo/gatewayd.yaml):
    # voltage x10, current x100, power, a 32-bit energy counter, a writable setpoint.
    device = SimDevice(
        id=1,
        simdata=[
            SimData(0, values=[2301, 512, 1178, 0, 4200, 0], datatype=DataType.REGISTERS),
        ],
    )
    server = ModbusTcpServer(device, address=("127.0.0.1", port))
    task = asyncio.create_task(server.serve_forever(), name="demo.modbus")
    load = asyncio.create_task(_meter_load(server), name="demo.load")
    try:
        await _wait_port(port)
        yield
    finally:
        load.cancel()
        await server.shutdown()  # type: ignore[no-untyped-call]
        task.cancel()
        for done in (load, task):
            with contextlib.suppress(asyncio.CancelledError):
                await done


async def _meter_load(server: Any) -> None:
    """Make the meter's power swing and its energy counter climb, once a second."""
    energy = 4200
    for second in itertools.count():
        power = 1000 + round(500 * math.sin(second / 10))
        energy += power // 3600 + 1
        await server.context.async_setValues(1, 16, 2, [power, energy >> 16, energy & 0xFFFF])
        await asyncio.sleep(1)


@contextlib.asynccontextmanager
async def _daemon(
    work: Path, broker_port: int, api_port: int, modbus_port: int
) -> AsyncIterator[asyncio.subprocess.Process]:
    env = {
        **os.environ,
        "GATEWAYD_STATE_DIR": str(work / "state"),
        "GATEWAYD_API__PORT": str(api_port),
        "GATEWAYD_CLOUD__HOST": "127.0.0.1",
        "GATEWAYD_CLOUD__PORT": str(broker_port),
        # config/demo/gatewayd.yaml polls the simulator through the `meter` connection.
        "GATEWAYD_CONNECTIONS__METER__PORT": str(modbus_port),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd", "run", "-c", str(DEMO_DIR / "gatewayd.yaml"),
        env=env, stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await _wait_port(api_port, proc)
        yield proc
    finally:
        await _stop(proc)


async def _wait_port(
    port: int, proc: asyncio.subprocess.Process | None = None, timeout_s: float = 15.0
) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if proc is not None and proc.returncode is not None:
                msg = f"process exited with {proc.returncode} before listening on {port}"
                raise RuntimeError(msg)
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
