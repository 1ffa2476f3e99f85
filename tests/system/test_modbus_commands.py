"""A command bound to register writes on a Modbus TCP unit, from the cloud and back."""

from __future__ import annotations

from typing import Any

from tests.drivers.modbus.sim import WRITE_REGISTERS, Requests, split_device, tcp_server
from tests.helpers import free_port, write_yaml
from tests.system.harness import cloud_and_gateway

LIMITER = {
    "product_id": "limiter",
    "name": "A power limiter",
    "services": [
        {
            "service_id": "Energy",
            "properties": [
                {"name": "limit", "type": "int", "unit": "W", "min": 0, "max": 60000,
                 "access": "RW"},
            ],
            "commands": [
                {"name": "set_limit",
                 "paras": [{"name": "watts", "type": "int", "min": 0, "max": 60000}],
                 "responses": [{"name": "limit", "type": "int"}]},
            ],
        }
    ],
}  # fmt: skip


async def test_a_bound_command_writes_the_register_in_order_and_answers_the_read_back(tmp_path):
    write_yaml(tmp_path / "products" / "limiter.yaml", LIMITER)
    port, requests = free_port(), Requests()
    binding = {
        "steps": [
            {"write": "limit", "value": 0},
            {"wait_s": 0.05},
            {"write": "limit", "parameter": "watts"},
        ],
        "responses": {"limit": "limit"},
    }
    connections = {"meter": {"driver": "modbus-tcp", "host": "127.0.0.1", "port": port,
                             "timeout_s": 0.5, "devices": {"m1": {
                                 "product_id": "limiter", "unit_id": 1, "interval_s": 0.2,
                                 "points": {"limit": {"address": 5, "type": "uint16",
                                                      "writable": True}},
                                 "commands": {"set_limit": binding}}}}}  # fmt: skip
    requests.clamp[1, 5] = (0, 6000)  # the unit holds 6000 W at most
    async with (
        tcp_server([split_device(1, requests)], port) as server,
        cloud_and_gateway(tmp_path, connections) as (cloud, _app),
    ):
        await cloud.push(
            "limiter_m1",
            "commands",
            {"id": "c1", "name": "set_limit", "parameters": {"watts": 9000}},
        )
        bad = {"id": "c2", "name": "set_limit", "parameters": {"watts": -5}}
        await cloud.push("limiter_m1", "commands", bad)

        def answers(command_id: str) -> list[dict[str, Any]]:
            return [u.body for u in cloud.of("commands/update", "limiter_m1")
                        if u.body["id"] == command_id]  # fmt: skip

        await cloud.wait(lambda: any(a["status"] != "in_progress" for a in answers("c2")))
        assert answers("c1")[-1] == {
            "id": "c1",
            "status": "done",
            "message": "",
            "response": {"limit": 6000},
        }
        assert answers("c2")[-1]["status"] == "error"
        assert "parameter 'watts'" in answers("c2")[-1]["message"]
        assert await server.context.async_getValues(1, 3, 5, 1) == [6000]
    seen = requests.seen  # pymodbus passes each request to the action twice: folded
    folded = [r for i, r in enumerate(seen) if i == 0 or seen[i - 1] != r]
    writes = [(fc, addr) for _unit, fc, addr, _n in folded if fc in WRITE_REGISTERS]
    assert writes == [(6, 5), (6, 5)], seen  # off to 0, then the asked value; c2 never wrote
