"""The uplink against a real mosquitto and the reference cloud, in one process."""

from __future__ import annotations

import asyncio
import gc
import json
from datetime import UTC, datetime

import pytest

from gatewayd.model import PointRef, Reading
from tests.mqtt_broker import Broker, make_tls
from tests.refcloud import RefCloud
from tests.uplink_harness import running_gateway, settings_for


def reading(device: str, value: float) -> Reading:
    return Reading(PointRef("sim", device, "seq"), value, None, datetime.now(UTC))


async def until(predicate, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.fixture
def broker(tmp_path):
    with Broker(tmp_path / "broker") as b:
        yield b


async def test_telemetry_arrives_with_record_id_and_device_property(tmp_path, broker):
    settings = settings_for(tmp_path, broker.port, ["a", "b"])
    async with RefCloud(broker.port).running() as cloud, running_gateway(settings) as gw:
        for i in range(20):
            await gw.sink.readings("sim", "a", [reading("a", i)])
            await gw.sink.readings("sim", "b", [reading("b", 100 + i)])
        await cloud.wait(lambda: len(cloud.telemetry()) >= 40)
        await until(lambda: gw.outbox.depth == 0)
        first = cloud.of("telemetry", "memory_a")[0]
        assert first.body["status"] == "online"
        assert first.body["telemetries"] == {"seq": 0}
        assert first.body["record_id"] == f"{gw.outbox.boot}-1"
        assert first.body["timestamp"].endswith("Z")
        assert first.user == {"device_id": "memory_a"}
        assert [u.body["telemetries"]["seq"] for u in cloud.of("telemetry", "memory_b")] == [
            100 + i for i in range(20)
        ]


async def test_connect_subscribes_resyncs_and_registers_children(tmp_path, broker):
    settings = settings_for(tmp_path, broker.port, ["a", "bad"])
    cloud = RefCloud(broker.port, refuse={"bad": ("IOTDA.014000", "product does not exist")})
    async with cloud.running(), running_gateway(settings) as gw:
        gw.board.set("memory_a", "ONLINE")
        await cloud.wait(lambda: len(cloud.of("get")) >= 3)
        assert {u.device for u in cloud.of("get")} == {gw.id, "memory_a", "memory_bad"}
        add = cloud.of("children/add")[0].body
        assert {d["device_id"] for d in add["devices"]} == {"memory_a", "memory_bad"}
        assert all(d["parent_device_id"] == gw.id for d in add["devices"])
        await until(lambda: len(cloud.of("children/status")) >= 1)
        assert cloud.of("children/status")[0].body == {
            "devices": [{"device_id": "memory_a", "status": "ONLINE"}]
        }
        await until_async(
            gw.state.children, lambda c: c.get("memory_bad", {}).get("state") == "refused"
        )
        found = await gw.state.children()
        assert found["memory_a"]["state"] == "registered"
        assert found["memory_bad"]["reason"] == "IOTDA.014000: product does not exist"
        # A status change while connected goes out at once, only the change.
        gw.board.set("memory_a", "OFFLINE")
        await until(lambda: len(cloud.of("children/status")) >= 2)
        assert cloud.of("children/status")[-1].body["devices"] == [
            {"device_id": "memory_a", "status": "OFFLINE"}
        ]


async def until_async(fetch, check, timeout_s: float = 10.0):
    async with asyncio.timeout(timeout_s):
        while True:
            value = await fetch()
            if check(value):
                return value
            await asyncio.sleep(0.02)


async def test_children_add_is_retried_until_the_cloud_answers(tmp_path, broker):
    settings = settings_for(tmp_path, broker.port, ["a"])
    cloud = RefCloud(broker.port, answer_children=False)
    async with cloud.running(), running_gateway(settings) as gw:
        await cloud.wait(lambda: len(cloud.of("children/add")) >= 2, timeout_s=5)
        assert (await gw.state.children())["memory_a"]["state"] == "pending"
        cloud.answer_children = True
        await until_async(gw.state.children, lambda c: c["memory_a"]["state"] == "registered")


async def test_acl_denied_topic_is_dead_lettered_and_later_records_flow(tmp_path):
    acl = "topic deny v1/device/memory_bad/telemetry\ntopic readwrite v1/#\n"
    with Broker(tmp_path / "broker", acl=acl) as broker:
        settings = settings_for(tmp_path, broker.port, ["good", "bad"])
        async with RefCloud(broker.port).running() as cloud, running_gateway(settings) as gw:
            await gw.sink.readings("sim", "bad", [reading("bad", 1)])
            for i in range(5):
                await gw.sink.readings("sim", "good", [reading("good", i)])
            await cloud.wait(lambda: len(cloud.of("telemetry", "memory_good")) == 5)
            await until(lambda: gw.outbox.depth == 0)
            dead = await gw.outbox.dead_letters()
            assert [(d.device, d.kind, d.reason_code) for d in dead] == [
                ("memory_bad", "telemetry", 0x87)
            ]
            assert "Not authorized" in dead[0].reason
            assert cloud.of("telemetry", "memory_bad") == []
            # later records still flow
            await gw.sink.readings("sim", "good", [reading("good", 5)])
            await cloud.wait(lambda: len(cloud.of("telemetry", "memory_good")) == 6)


async def test_oversized_record_is_dead_lettered_before_it_breaks_the_link(tmp_path):
    broker = Broker(tmp_path / "broker")
    broker.conf.write_text(broker.conf.read_text() + "max_packet_size 2000\n")
    with broker:
        settings = settings_for(tmp_path, broker.port, ["a"])
        async with RefCloud(broker.port).running() as cloud, running_gateway(settings) as gw:
            await until(lambda: gw.uplink.connects == 1)
            await gw.outbox.append("memory_a", "telemetry", json.dumps({"x": "y" * 5000}).encode())
            await gw.sink.readings("sim", "a", [reading("a", 7)])
            await cloud.wait(lambda: len(cloud.telemetry()) == 1)
            await until(lambda: gw.outbox.depth == 0)
            dead = await gw.outbox.dead_letters()
            assert [d.reason_code for d in dead] == [0x95]
            assert gw.uplink.connects == 1


async def test_a_record_no_topic_can_carry_is_dead_lettered_and_the_link_stays(tmp_path, broker):
    settings = settings_for(tmp_path, broker.port, ["a"])
    async with RefCloud(broker.port).running() as cloud, running_gateway(settings) as gw:
        await until(lambda: gw.uplink.connects == 1)
        await gw.outbox.append("memory+a", "telemetry", b'{"telemetries":{}}')
        await gw.sink.readings("sim", "a", [reading("a", 7)])
        await cloud.wait(lambda: len(cloud.telemetry()) == 1)
        await until(lambda: gw.outbox.depth == 0)
        dead = await gw.outbox.dead_letters()
        assert [(d.device, d.reason_code) for d in dead] == [("memory+a", None)]
        assert "not a valid topic name" in dead[0].reason
        assert gw.uplink.connects == 1


async def test_config_versions_commands_and_snapshot(tmp_path, broker):
    settings = settings_for(tmp_path, broker.port, ["a"])
    cloud = RefCloud(broker.port)
    cloud.snapshots["memory_a"].space_info = {
        "name": "Lab",
        "maintenance": False,
        "location": {"utc_offset": 60},
    }
    cloud.snapshots["memory_a"].firmware = {
        "latest_fw_version": "1.0.8",
        "latest_fw_file_id": "f62e",
    }
    cloud.snapshots["memory_a"].licenses = [
        {
            "data": "d",
            "signature": "s",
            "id": "lic-1",
            "add": True,
            "update": False,
            "remove": False,
        }
    ]
    async with cloud.running(), running_gateway(settings) as gw:
        await until_async(lambda: gw.state.info("memory_a", "firmware"), lambda v: v is not None)
        assert (await gw.state.info("memory_a", "space_info"))["name"] == "Lab"
        await cloud.wait(lambda: len(cloud.of("license/update")) == 1)
        assert cloud.of("license/update")[0].body == {"id": "lic-1", "state": "inuse"}
        assert (await gw.state.licenses("memory_a"))[0]["state"] == "inuse"

        await cloud.push("memory_a", "config", {"version": 2, "last_updated": "t2", "x": 2})
        await until_async(lambda: gw.state.desired_config("memory_a"), lambda v: v is not None)
        await cloud.push("memory_a", "config", {"version": 1, "last_updated": "t1", "x": 1})
        await cloud.push("memory_a", "config", {"version": "3", "x": 3, "y": True})
        await until_async(
            lambda: gw.state.desired_config("memory_a"), lambda v: v["version"] == "3"
        )
        await cloud.push("memory_a", "config", {"version": 2, "x": 22})
        await cloud.push("memory_a", "commands", {"id": "sync", "name": "ping"})  # a marker
        await cloud.wait(lambda: any(u.body["id"] == "sync" for u in cloud.of("commands/update")))
        stored = await gw.state.desired_config("memory_a")
        assert stored["version"] == "3"
        assert stored["fields"] == {"x": 3, "y": True}


async def test_a_command_is_executed_once_even_when_redelivered_and_after_restart(tmp_path, broker):
    settings = settings_for(tmp_path, broker.port, ["a"])
    command = {"id": "c-1", "status": "pending", "name": "ping", "parameters": {}}
    async with RefCloud(broker.port).running() as cloud:
        async with running_gateway(settings) as gw:
            await until(lambda: gw.uplink.connects == 1)
            await cloud.push("memory_a", "commands", command)
            await cloud.push("memory_a", "commands", command)
            await cloud.push("memory_a", "commands", {"id": "c-2", "name": "reboot"})
            await cloud.wait(lambda: len(cloud.of("commands/update")) >= 4)
        async with running_gateway(settings) as gw:
            await until(lambda: gw.uplink.connects == 1)
            await cloud.push("memory_a", "commands", command)
            await cloud.push("memory_a", "commands", {"id": "c-3", "name": "ping"})
            await cloud.wait(
                lambda: any(u.body["id"] == "c-3" for u in cloud.of("commands/update"))
            )
            listed = await gw.state.commands("memory_a")
        updates = [(u.body["id"], u.body["status"]) for u in cloud.of("commands/update")]
        assert updates.count(("c-1", "in_progress")) == 1
        assert updates.count(("c-1", "done")) == 1
        assert ("c-2", "error") in updates
        assert {c.id: c.status for c in listed} == {"c-1": "done", "c-2": "error", "c-3": "done"}
        message = [u.body["message"] for u in cloud.of("commands/update") if u.body["id"] == "c-2"]
        assert "'reboot' is not supported" in message[-1]


async def test_malformed_downlinks_are_dropped_and_the_link_stays_up(tmp_path, broker, caplog):
    settings = settings_for(tmp_path, broker.port, ["a"])
    async with RefCloud(broker.port).running() as cloud, running_gateway(settings) as gw:
        await until(lambda: gw.uplink.connects == 1)
        for kind, body in [
            ("config", b"not json"),
            ("config", {"last_updated": "x"}),
            ("commands", {"name": "ping"}),
            ("commands", [1, 2]),
            ("license", {"add": True}),
            ("firmware", {}),
            ("space_info", "text"),
        ]:
            await cloud.push("memory_a", kind, body)
        await cloud.push(gw.id, "children/add/response", {"successful_devices": 3})
        await cloud.push("memory_a", "config", {"version": 1, "ok": True})
        await until_async(lambda: gw.state.desired_config("memory_a"), lambda v: v is not None)
        assert gw.uplink.connects == 1
        messages = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
        assert len(messages) == 8
        assert any("/commands' (" in m and ": id: Field required" in m for m in messages)
        assert any("payload is not JSON" in m for m in messages)


async def test_tls_with_client_certificate_password_and_access_key(tmp_path):
    tls = make_tls(tmp_path / "tls")
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "key").write_text("ak-123\n")
    broker = Broker(tmp_path / "broker", tls=tls, passwords={"gw": "s3cret", "refcloud": "rc"})
    with broker:
        settings = settings_for(
            tmp_path,
            broker.port,
            ["a"],
            cloud={
                "username": "gw",
                "password_file": str(tmp_path / "pw"),
                "access_key_file": str(tmp_path / "key"),
                "tls": {
                    "enabled": True,
                    "ca_file": str(tls.ca),
                    "cert_file": str(tls.client_cert),
                    "key_file": str(tls.client_key),
                },
            },
        )
        async with running_gateway(settings) as gw:
            await until(lambda: gw.uplink.connects == 1)
            assert "MQTT 5" in gw.health.component("uplink").detail
            await gw.sink.readings("sim", "a", [reading("a", 1)])
            await until(lambda: gw.outbox.depth == 0)


# paho 2.2 does not close its socket when the TLS handshake fails; it is collected here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_tls_refuses_a_broker_the_ca_does_not_vouch_for(tmp_path):
    tls = make_tls(tmp_path / "tls")
    other = make_tls(tmp_path / "other")
    with Broker(tmp_path / "broker", tls=tls) as broker:
        settings = settings_for(
            tmp_path, broker.port, ["a"], cloud={"tls": {"enabled": True, "ca_file": str(other.ca)}}
        )
        async with running_gateway(settings) as gw:
            component = gw.health.component("uplink")
            await until(lambda: component.state.value == "down")
            assert "CERTIFICATE_VERIFY_FAILED" in component.detail
            assert gw.uplink.connects == 0
    gc.collect()


async def test_offline_boot_then_broker_appears(tmp_path):
    broker = Broker(tmp_path / "broker")
    settings = settings_for(tmp_path, broker.port, ["a"])
    async with running_gateway(settings) as gw:
        for i in range(50):
            await gw.sink.readings("sim", "a", [reading("a", i)])
        await until(lambda: gw.outbox.depth == 50)  # telemetry is put, committed soon after
        with broker:
            async with RefCloud(broker.port).running() as cloud:
                await cloud.wait(lambda: len(cloud.telemetry()) >= 50)
                seqs = [u.body["telemetries"]["seq"] for u in cloud.telemetry()]
                assert seqs == list(range(50))


async def test_mqtt_311_carries_no_user_properties(tmp_path, broker):
    settings = settings_for(tmp_path, broker.port, ["a"], cloud={"mqtt_version": "3.1.1"})
    async with RefCloud(broker.port).running() as cloud, running_gateway(settings) as gw:
        await gw.sink.readings("sim", "a", [reading("a", 1)])
        await cloud.wait(lambda: len(cloud.telemetry()) == 1)
        assert "MQTT 3.1.1" in gw.health.component("uplink").detail
        assert cloud.telemetry()[0].user == {}
        assert cloud.telemetry()[0].body["record_id"] == f"{gw.outbox.boot}-1"


async def test_window_follows_receive_maximum_and_rate_follows_the_bucket(tmp_path):
    broker = Broker(tmp_path / "broker", max_inflight=7)
    with broker:
        settings = settings_for(tmp_path, broker.port, ["a"], cloud={"rate_limit_msg_s": 20})
        async with RefCloud(broker.port).running() as cloud, running_gateway(settings) as gw:
            await until(lambda: gw.uplink.connects == 1)
            for i in range(60):
                await gw.sink.readings("sim", "a", [reading("a", i)])
            await cloud.wait(lambda: len(cloud.telemetry()) == 60, timeout_s=10)
            assert gw.uplink.pump.window == 7
            arrivals = [u.at for u in cloud.telemetry()]
            # 20 in the first burst, then 20/s: the last 40 take about 2 s
            assert arrivals[-1] - arrivals[0] >= 1.8


async def test_a_broker_that_stops_reading_gets_every_message_whole_and_in_order(tmp_path):
    """Bursts larger than the socket takes wait in the client and go out once it drains."""
    broker = Broker(tmp_path / "broker", max_inflight=50)
    with broker:
        settings = settings_for(tmp_path, broker.port, ["a"])
        async with RefCloud(broker.port).running() as cloud, running_gateway(settings) as gw:
            await gw.sink.readings("sim", "a", [reading("a", -1)])
            await cloud.wait(lambda: len(cloud.telemetry()) == 1)  # resync done, pump running
            broker.pause()
            try:
                for i in range(50):  # 50 x 400 kB: more than loopback's socket buffers hold
                    big = Reading(
                        PointRef("sim", "a", "seq"), f"{i:06d}" * 66_000, None, datetime.now(UTC)
                    )
                    await gw.sink.readings("sim", "a", [big])
                await until(lambda: gw.uplink.pump.sent == 51, timeout_s=30)
            finally:
                broker.resume()
            await cloud.wait(lambda: len(cloud.telemetry()) == 51, timeout_s=60)
            await until(lambda: gw.outbox.depth == 0, timeout_s=30)
            got = [u.body["telemetries"]["seq"] for u in cloud.of("telemetry", "memory_a")]
            assert got == [-1] + [f"{i:06d}" * 66_000 for i in range(50)]
            assert gw.uplink.connects == 1  # nothing broke the session


async def test_records_that_arrive_close_together_leave_in_one_round(tmp_path, broker, monkeypatch):
    import gatewayd.cloud.pump as pump_module  # noqa: PLC0415

    monkeypatch.setattr(pump_module, "GATHER_S", 2.0)
    settings = settings_for(tmp_path, broker.port, ["a"])
    async with RefCloud(broker.port).running() as cloud, running_gateway(settings) as gw:
        await gw.sink.readings("sim", "a", [reading("a", -1)])
        await cloud.wait(lambda: len(cloud.telemetry()) == 1, timeout_s=10)
        sent = gw.uplink.pump.sent
        seen: list[int] = []
        for i in range(5):  # spread over 50 ms, the pump free to run between them
            await gw.sink.readings("sim", "a", [reading("a", i)])
            await asyncio.sleep(0.01)
            seen.append(gw.uplink.pump.sent)
        # The first append woke the idle pump; it sends nothing until its gathering window
        # (2 s here, 40 times the spread) ends. A round's sends happen in one step of the
        # loop, so `sent` is never seen part-way through a round.
        assert seen == [sent] * 5, seen
        await until(lambda: gw.uplink.pump.sent > sent, timeout_s=10)
        assert gw.uplink.pump.sent == sent + 5  # all five in the same round, not one by one
        await cloud.wait(lambda: len(cloud.telemetry()) == 6, timeout_s=10)


async def test_children_no_longer_configured_are_deleted(tmp_path, broker):
    async with RefCloud(broker.port).running() as cloud:
        async with running_gateway(settings_for(tmp_path, broker.port, ["a", "b"])) as gw:
            await until_async(
                gw.state.children,
                lambda c: len(c) == 2 and all(v["state"] == "registered" for v in c.values()),
            )
        async with running_gateway(settings_for(tmp_path, broker.port, ["a"])) as gw:
            await until_async(gw.state.children, lambda c: c["memory_b"]["state"] == "deleted")
            assert cloud.of("children/delete")[0].body["devices"] == ["memory_b"]
            assert (await gw.state.children())["memory_a"]["state"] == "registered"
