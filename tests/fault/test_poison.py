"""A record that breaks the connection every time it is sent ends in the dead letters.

A small TCP proxy between the gateway and mosquitto cuts the connection whenever the client
sends a packet containing `POISON` (a stand-in for a message a middlebox or broker chokes on).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from gatewayd.model import PointRef, Reading
from tests.helpers import free_port
from tests.mqtt_broker import Broker
from tests.refcloud import RefCloud
from tests.uplink_harness import running_gateway, settings_for


@contextlib.asynccontextmanager
async def cutting_proxy(target_port: int, marker: bytes) -> AsyncIterator[tuple[int, list[int]]]:
    cuts: list[int] = []
    tasks: set[asyncio.Task[None]] = set()

    async def pipe(reader, writer, watch: bool, peer) -> None:
        try:
            while data := await reader.read(65536):
                if watch and marker in data:
                    cuts.append(1)
                    break
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            peer.close()

    async def handle(client_reader, client_writer) -> None:
        try:
            broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_writer.close()
            return
        for task in (
            asyncio.create_task(pipe(client_reader, broker_writer, True, client_writer)),
            asyncio.create_task(pipe(broker_reader, client_writer, False, broker_writer)),
        ):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    port = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        yield port, cuts
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


def reading(value: float) -> Reading:
    return Reading(PointRef("sim", "a", "seq"), value, None, datetime.now(UTC))


async def test_a_record_that_keeps_breaking_the_connection_is_dead_lettered(tmp_path):
    with Broker(tmp_path / "broker") as broker:
        async with (
            cutting_proxy(broker.port, b"POISON") as (port, cuts),
            RefCloud(broker.port).running() as cloud,
        ):
            settings = settings_for(tmp_path, port, ["a", "b"])
            async with running_gateway(settings) as gw:
                async with asyncio.timeout(10):
                    while gw.uplink.connects < 1:
                        await asyncio.sleep(0.01)
                await gw.sink.readings("sim", "a", [reading(1)])
                await gw.outbox.append("memory_a", "telemetry", b'{"telemetries":"POISON"}')
                for i in range(2, 6):
                    await gw.sink.readings("sim", "a", [reading(i)])
                    await gw.sink.readings("sim", "b", [reading(i)])
                await cloud.wait(lambda: len(cloud.of("telemetry", "memory_a")) == 5, 20)
                async with asyncio.timeout(10):
                    while gw.outbox.depth:
                        await asyncio.sleep(0.02)
                dead = await gw.outbox.dead_letters()
                assert [d.payload for d in dead] == [b'{"telemetries":"POISON"}']
                assert "dropped 3 times" in dead[0].reason
                assert len(cuts) >= 3
                seqs = [u.body["telemetries"]["seq"] for u in cloud.of("telemetry", "memory_a")]
                assert sorted(set(seqs)) == [1, 2, 3, 4, 5]
                assert len(cloud.of("telemetry", "memory_b")) >= 4
