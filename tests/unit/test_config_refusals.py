"""What the configuration refuses, in process: bounds, lines, conflicts, and what stays valid."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gatewayd.config_load import InvalidConfig, load_config, load_settings
from gatewayd.products import ProductError, load_products
from gatewayd.settings import Settings
from tests.e2e.test_config_hostile import BASE, CASES, MEMORY, PRODUCT, SITE, _laughs, _write
from tests.helpers import write_yaml


@pytest.mark.parametrize("name", list(CASES))
def test_every_hostile_case_is_refused_within_a_second(tmp_path, monkeypatch, name):
    case = CASES[name]
    main = _write(tmp_path, case)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    started = time.monotonic()
    with pytest.raises(InvalidConfig) as info:
        load_settings(main)
    assert time.monotonic() - started < 1.0
    text = str(info.value)
    for fragment in case.expect:
        assert fragment.replace("FILE", str(main)) in text


def test_aliases_and_merge_keys_within_the_bound_still_load(tmp_path):
    main = tmp_path / "gw.yaml"
    main.write_text(
        BASE
        + "connections:\n  c:\n    driver: memory\n    devices:\n"
        + "      a: &meter {interval_s: 2, points: {t: {initial: 1}, u: {initial: 2}}}\n"
        + "      b: {<<: *meter, interval_s: 3}\n"
        + "".join(f"      d{i}: *meter\n" for i in range(200))
    )
    devices = load_settings(main).connections["c"].devices  # type: ignore[attr-defined]
    assert len(devices) == 202
    assert devices["b"].interval_s == 3
    assert devices["b"].points["u"].initial == 2
    assert devices["d7"].interval_s == 2


def test_an_error_inside_an_aliased_value_names_the_alias_line(tmp_path):
    main = tmp_path / "gw.yaml"
    main.write_text(
        BASE
        + MEMORY
        + "      a: &meter {interval_s: 2}\n"  # line 8
        + "      b: *meter\n"  # line 9
        + "      c: {<<: *meter, interval_s: 0}\n"  # line 10
    )
    with pytest.raises(InvalidConfig) as info:
        load_settings(main)
    assert str(info.value) == (
        f"{main}: connections.c.devices.c.interval_s: Input should be greater than or equal "
        "to 0.001 (line 10)"
    )


def test_conf_d_errors_name_their_file_and_line(tmp_path):
    main = write_yaml(tmp_path / "gw.yaml", {"gateway": {"node_id": "g"}})
    extra = tmp_path / "conf.d" / "20-api.yaml"
    extra.parent.mkdir()
    extra.write_text("# site overrides\napi:\n  port: http\n")
    with pytest.raises(InvalidConfig) as info:
        load_settings(main)
    assert str(info.value).startswith(f"{extra}: api.port: Input should be a valid integer")
    assert str(info.value).endswith("(line 3)")


def test_duplicate_keys_are_refused_in_every_file(tmp_path):
    main = write_yaml(tmp_path / "gw.yaml", {"gateway": {"node_id": "g"}})
    extra = tmp_path / "conf.d" / "10-a.yaml"
    extra.parent.mkdir()
    extra.write_text("api: {port: 1, port: 2}\n")
    with pytest.raises(InvalidConfig, match=r"10-a.yaml: api.port: duplicate key"):
        load_settings(main)


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("on: 1\n", "key 'on' is read as bool"),
        ("api: {port: !!python/object:os.system x}\n", "unsupported tag"),
        ("gateway: {node_id: g, name: 2024-02-30}\n", "'2024-02-30' is not a valid timestamp"),
        ("- a\n- b\n", "the top level must be a mapping of sections, not a list"),
        ("gateway: [unclosed\n", "not valid YAML"),
        ("a: *nowhere\n", "found undefined alias"),
        ('api: {host: "a\x01b"}\n', r"character U\+0001 is not allowed \(line 1\)"),
    ],
)
def test_more_hostile_yaml(tmp_path, text, expect):
    main = tmp_path / "gw.yaml"
    main.write_text(text)
    with pytest.raises(InvalidConfig, match=expect):
        load_settings(main)


def _two(first: dict[str, object], second: dict[str, object]) -> dict[str, object]:
    return {"gateway": {"node_id": "g"}, "connections": {"a": first, "b": second}}


def test_one_serial_port_in_two_connections_is_refused(tmp_path):
    rtu = {"driver": "modbus-rtu", "port": "/dev/ttyUSB0", "devices": {}}
    line = {"driver": "serial", "port": "/dev/ttyUSB0"}
    with pytest.raises(InvalidConfig, match=r"connections.b.port: /dev/ttyUSB0 is also the port"):
        load_settings(write_yaml(tmp_path / "gw.yaml", _two(rtu, line)))


def test_one_bluetooth_device_in_two_connections_is_refused(tmp_path):
    def ble(adapter: str) -> dict[str, object]:
        point = {"source": "rssi"}
        device = {"address": "a4:c1:38:00:11:22", "points": {"rssi": point}}
        return {"driver": "ble", "adapter": adapter, "devices": {f"s-{adapter}": device}}

    with pytest.raises(InvalidConfig, match=r"the same device \(Bluetooth A4:C1:38:00:11:22\)"):
        load_settings(write_yaml(tmp_path / "gw.yaml", _two(ble("hci0"), ble("hci1"))))


def test_units_shared_within_one_connection_and_disabled_duplicates_stay_valid(tmp_path):
    def tcp(enabled: bool, *units: int) -> dict[str, object]:
        devices = {
            f"m{i}": {"unit_id": u, "node_id": f"n{enabled}{i}", "points": {"x": {"address": i}}}
            for i, u in enumerate(units)
        }
        return {"driver": "modbus-tcp", "host": "10.0.0.5", "enabled": enabled, "devices": devices}

    settings = load_settings(write_yaml(tmp_path / "gw.yaml", _two(tcp(True, 1, 1), tcp(False, 1))))
    assert len(settings.connections) == 2


def test_a_device_id_may_not_be_the_gateways(tmp_path):
    data = {
        "gateway": {"node_id": "g", "product_id": "memory", "device_id": "memory_room"},
        "connections": {"c": {"driver": "memory", "devices": {"room": {}}}},
    }
    with pytest.raises(InvalidConfig, match=r"device id 'memory_room' is also the gateway itself"):
        load_settings(write_yaml(tmp_path / "gw.yaml", data))


def test_state_dir_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    data = {"gateway": {"node_id": "g"}, "state_dir": "file/state"}
    with pytest.raises(InvalidConfig, match=r"state_dir: .*file/state cannot be created: .* is a"):
        load_settings(write_yaml(tmp_path / "gw.yaml", data))


def test_lower_case_environment_variables_are_checked_too(tmp_path, monkeypatch):
    monkeypatch.setenv("gatewayd_nosuch", "1")
    with pytest.raises(InvalidConfig, match=r"environment gatewayd_nosuch: nosuch: no such"):
        load_settings(write_yaml(tmp_path / "gw.yaml", {"gateway": {"node_id": "g"}}))


def test_product_warnings_name_file_line_and_key(tmp_path):
    main = tmp_path / "gatewayd.yaml"
    main.write_text(SITE)
    (tmp_path / "products").mkdir()
    (tmp_path / "products" / "thermostat.yaml").write_text(PRODUCT)
    loaded = load_config(main)
    warnings = [str(w) for w in loaded.product_warnings(load_products(loaded.settings.products))]
    assert len(warnings) == 2
    assert warnings[0].endswith("'humidity' is not a property of product 'thermostat' (line 9)")


def test_the_schema_offers_only_what_is_implemented():
    schema = Settings.model_json_schema()
    assert schema["$defs"]["CloudConfig"]["properties"]["dialect"]["const"] == "native"


def test_writability_against_the_product_is_checked(tmp_path):
    main = tmp_path / "gatewayd.yaml"
    main.write_text(
        BASE
        + "products: products\n"
        + MEMORY
        + "      room:\n"  # line 9
        + "        product_id: thermostat\n"
        + "        points:\n"
        + "          temperature: {writable: true}\n"  # line 12
        + "          mode: {}\n"  # line 13
    )
    (tmp_path / "products").mkdir()
    (tmp_path / "products" / "thermostat.yaml").write_text(
        PRODUCT
        + "      - {name: mode, type: string, access: RW}\n"
        + "      - {name: setpoint, type: decimal, access: RW}\n"
    )
    loaded = load_config(main)
    warnings = [str(w) for w in loaded.product_warnings(load_products(loaded.settings.products))]
    room = f"{main}: connections.c.devices.room.points"
    assert warnings == [
        (
            f"{room}.temperature.writable: writable, but property 'temperature' of product "
            "'thermostat' is read-only (line 12)"
        ),
        (
            f"{room}.mode: property 'mode' of product 'thermostat' is settable (access RW), "
            "but the point is not writable: what is asked for is never written (line 13)"
        ),
        (
            f"{room}: settable property 'setpoint' of product 'thermostat' has no point to write "
            "(line 11)"
        ),
    ]


def test_a_product_file_is_read_under_the_same_bounds(tmp_path):
    products = tmp_path / "products"
    products.mkdir()
    (products / "bomb.yaml").write_text("product_id: p\nname: P\n" + _laughs("[", "]", "lol{}"))
    (products / "twice.yaml").write_text("product_id: q\nname: Q\nname: R\n")
    started = time.monotonic()
    with pytest.raises(ProductError) as info:
        load_products(products)
    assert time.monotonic() - started < 1.0
    assert info.value.problems == [
        (
            f"{products / 'bomb.yaml'}: l5.0: through aliases, the document grows past 200,000 "
            "values (the most it may hold) (line 8)"
        ),
        (
            f"{products / 'twice.yaml'}: name: duplicate key (first at line 2): the second would "
            "win (line 3)"
        ),
    ]


@pytest.mark.parametrize(
    ("name", "expect"),
    [
        ("GATEWAYD_STATE_DIR__X", "state_dir.x: no such setting: state_dir is a single value"),
        ("GATEWAYD_API__PORT__X", "api.port.x: no such setting: api.port is a single value"),
        ("GATEWAYD_CLOUD__TLS__NOPE", "'nope' is not a key in cloud.tls (ca_file, cert_file,"),
        ("GATEWAYD_CONNECTIONS__C__NOPE", "'nope' is not a key in connections.c"),
        (
            "GATEWAYD_CONNECTIONS__C__DEVICES__D1__POINTS__T__INITIAL__Z",
            "connections.c.devices.d1.points.t.initial is a single value",
        ),
    ],
)
def test_a_variable_naming_no_setting_is_refused(tmp_path, monkeypatch, name, expect):
    main = tmp_path / "gw.yaml"
    main.write_text(BASE + MEMORY + "      d1: {points: {t: {initial: 1}}}\n")
    monkeypatch.setenv(name, "1")
    with pytest.raises(InvalidConfig) as info:
        load_settings(main)
    assert str(info.value).startswith(f"environment {name}: ")
    assert expect in str(info.value)


def test_variables_naming_settings_apply(tmp_path, monkeypatch):
    main = tmp_path / "gw.yaml"
    main.write_text(BASE + MEMORY + "      d1: {points: {t: {initial: 1}}}\n")
    monkeypatch.setenv("GATEWAYD_CLOUD__TLS__ENABLED", "true")
    monkeypatch.setenv("GATEWAYD_CONNECTIONS__C__DEVICES__D1__POINTS__T__INTERVAL_S", "7")
    monkeypatch.setenv("gatewayd_api__port", "8123")
    settings = load_settings(main)
    assert settings.cloud.tls.enabled
    assert settings.api.port == 8123
    device = settings.connections["c"].devices["d1"]  # type: ignore[attr-defined]
    assert device.points["t"].interval_s == 7


def test_a_key_made_by_a_variable_is_blamed_on_it(tmp_path, monkeypatch):
    main = write_yaml(tmp_path / "gw.yaml", {"gateway": {"node_id": "g"}})
    monkeypatch.setenv("GATEWAYD_API__TOKENS__OPS__SCOPE", "admin")
    with pytest.raises(InvalidConfig) as info:
        load_settings(main)
    assert str(info.value) == (
        "environment GATEWAYD_API__TOKENS__OPS__SCOPE: api.tokens.ops.sha256: Field required"
    )


def test_an_endless_file_is_refused_after_a_bounded_read():
    started = time.monotonic()
    with pytest.raises(InvalidConfig, match=r"/dev/zero: larger than 16 MiB: not a configuration"):
        load_settings(Path("/dev/zero"))
    assert time.monotonic() - started < 5.0


def test_json_nested_too_deeply_in_a_variable_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("GATEWAYD_GATEWAY", '{"name": ' + "[" * 20_000 + "]" * 20_000 + "}")
    with pytest.raises(InvalidConfig) as info:
        load_settings(write_yaml(tmp_path / "gw.yaml", {"gateway": {"node_id": "g"}}))
    assert str(info.value) == "environment GATEWAYD_GATEWAY: gateway: nested too deeply"


def test_a_huge_key_or_value_is_named_not_printed(tmp_path):
    main = tmp_path / "gw.yaml"
    main.write_text(
        "gateway: {node_id: g}\ncloud: {dialect: "
        + "x" * 100_000
        + "}\n? "
        + "y" * 100_000
        + "\n: 1\n"
    )
    with pytest.raises(InvalidConfig) as info:
        load_settings(main)
    assert len(info.value.problems) == 2
    assert len(str(info.value)) < 1000
    assert "(100,000 characters)" in str(info.value)
