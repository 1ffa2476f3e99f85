from pathlib import Path

import pytest

from gatewayd import config_docs
from gatewayd.config_load import InvalidConfig, load_settings, read_secret
from gatewayd.errors import ConfigError
from gatewayd.identity import child_identity
from tests.helpers import ROOT, write_yaml

BASE = {
    "gateway": {"node_id": "gw1"},
    "connections": {
        "sim": {
            "driver": "memory",
            "devices": {"d1": {"interval_s": 5, "name": "Boiler", "points": {"t": {"initial": 1}}}},
        }
    },
}


def test_minimal_config_loads_with_defaults(tmp_path):
    settings = load_settings(write_yaml(tmp_path / "gw.yaml", BASE))
    assert settings.api.port == 8080
    assert settings.api.host == "127.0.0.1"
    assert settings.gateway.effective_device_id == "gatewayd_gw1"
    dev = settings.connections["sim"].devices["d1"]  # type: ignore[attr-defined]
    assert dev.id == "d1"
    assert dev.points["t"].id == "t"


def test_conf_d_overrides_one_device_field(tmp_path):
    main = write_yaml(tmp_path / "gw.yaml", BASE)
    write_yaml(
        tmp_path / "conf.d" / "10-site.yaml",
        {"connections": {"sim": {"devices": {"d1": {"interval_s": 1.5}}}}},
    )
    settings = load_settings(main)
    dev = settings.connections["sim"].devices["d1"]  # type: ignore[attr-defined]
    assert dev.interval_s == 1.5
    assert dev.name == "Boiler"  # kept from the main file
    assert dev.points["t"].initial == 1


def test_conf_d_files_merge_in_name_order(tmp_path):
    main = write_yaml(tmp_path / "gw.yaml", BASE)
    write_yaml(tmp_path / "conf.d" / "20-b.yaml", {"api": {"port": 9002}})
    write_yaml(tmp_path / "conf.d" / "10-a.yaml", {"api": {"port": 9001, "host": "0.0.0.0"}})
    settings = load_settings(main)
    assert settings.api.port == 9002
    assert settings.api.host == "0.0.0.0"


def test_environment_overrides_yaml(tmp_path, monkeypatch):
    main = write_yaml(tmp_path / "gw.yaml", {**BASE, "api": {"port": 9000, "host": "127.0.0.2"}})
    monkeypatch.setenv("GATEWAYD_API__PORT", "9100")
    settings = load_settings(main)
    assert settings.api.port == 9100
    assert settings.api.host == "127.0.0.2"


def test_every_error_is_listed_with_file_and_path(tmp_path):
    main = write_yaml(
        tmp_path / "gw.yaml",
        {
            "gateway": {"product_id": "p"},  # node_id missing
            "api": {"port": "eighty"},  # wrong type
            "connections": {"sim": {"driver": "memory", "timeot_s": 3}},  # unknown key
        },
    )
    with pytest.raises(InvalidConfig) as info:
        load_settings(main)
    text = str(info.value)
    assert f"{main}: gateway.node_id: Field required" in text
    assert f"{main}: api.port: Input should be a valid integer" in text
    assert f"{main}: connections.sim.timeot_s: Extra inputs are not permitted" in text
    assert len(info.value.problems) == 3
    # the line of the key, or of the mapping a missing key belongs in
    assert [p.line for p in info.value.problems] == [1, 4, 8], main.read_text()


def test_error_names_the_conf_d_file_that_set_the_key(tmp_path):
    main = write_yaml(tmp_path / "gw.yaml", BASE)
    bad = write_yaml(tmp_path / "conf.d" / "50-bad.yaml", {"outbox": {"policy": "keep_all"}})
    with pytest.raises(InvalidConfig) as info:
        load_settings(main)
    assert str(info.value).startswith(f"{bad}: outbox.policy:")


def test_error_names_the_environment_variable(tmp_path, monkeypatch):
    main = write_yaml(tmp_path / "gw.yaml", BASE)
    monkeypatch.setenv("GATEWAYD_API__PORT", "99999")
    with pytest.raises(InvalidConfig) as info:
        load_settings(main)
    assert str(info.value).startswith("environment GATEWAYD_API__PORT: api.port:")


def test_yaml_syntax_error_names_the_file(tmp_path):
    main = tmp_path / "gw.yaml"
    main.write_text("gateway: [unclosed\n")
    with pytest.raises(InvalidConfig, match="not valid YAML"):
        load_settings(main)


def test_unknown_parent_is_refused(tmp_path):
    data = {
        "gateway": {"node_id": "g"},
        "connections": {"c": {"driver": "memory", "devices": {"meter": {"parent": "nope"}}}},
    }
    with pytest.raises(InvalidConfig, match=r"connections.c.devices.meter.parent: no device"):
        load_settings(write_yaml(tmp_path / "gw.yaml", data))


def test_unknown_driver_is_refused(tmp_path):
    data = {"gateway": {"node_id": "g"}, "connections": {"c": {"driver": "carrier-pigeon"}}}
    with pytest.raises(InvalidConfig, match=r"connections.c"):
        load_settings(write_yaml(tmp_path / "gw.yaml", data))


def test_relative_state_dir_is_relative_to_the_config_file(tmp_path):
    settings = load_settings(write_yaml(tmp_path / "gw.yaml", {**BASE, "state_dir": "state"}))
    assert settings.state_dir == tmp_path / "state"


def test_secret_from_credentials_directory(tmp_path):
    (tmp_path / "mqtt-password").write_text("s3cret\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert read_secret(Path("mqtt-password"), env) == "s3cret"
    with pytest.raises(ConfigError, match="secret file"):
        read_secret(Path("missing"), env)


SHIPPED_CONFIGS = sorted(
    p
    for p in (ROOT / "config").rglob("*.yaml")
    if "products" not in p.parts and p.parent.name != "conf.d"  # products: test_products.py
)


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_validates(path):
    load_settings(path)


def test_generated_docs_are_current():
    assert (ROOT / "docs" / "configuration.md").read_text() == config_docs.render_reference(), (
        "run: python -m gatewayd.config_docs"
    )
    assert (ROOT / "config" / "gatewayd.example.yaml").read_text() == config_docs.render_example()


def test_child_identity_defaults(tmp_path):

    settings = load_settings(write_yaml(tmp_path / "gw.yaml", BASE))
    conn = settings.connections["sim"]
    ident = child_identity(conn, conn.devices["d1"])  # type: ignore[attr-defined]
    assert (ident.device_id, ident.node_id, ident.product_id) == ("memory_d1", "d1", "memory")
