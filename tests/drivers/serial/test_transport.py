"""The port seam: settings a pty cannot take are checked against a fake port object."""

from __future__ import annotations

import pytest
import serial

from drivers.serial import SerialConnection, SerialDriver
from drivers.serial.transport import configure_port
from gatewayd.errors import ConnectionLost, DeviceUnavailable


class FakePort:
    """Records what is set on it, like an unopened serial.Serial."""

    def __init__(self, refuse: str | None = None, open_error: Exception | None = None) -> None:
        self.settings: dict[str, object] = {}
        self._refuse = refuse
        self._open_error = open_error
        self.opened = False

    def __setattr__(self, name: str, value: object) -> None:
        if name.startswith("_") or name in {"settings", "opened"}:
            object.__setattr__(self, name, value)
            return
        if name == self._refuse:
            raise ValueError(f"Not a valid {name}: {value!r}")
        self.settings[name] = value

    def open(self) -> None:
        if self._open_error is not None:
            raise self._open_error
        self.opened = True


def config(**extra: object) -> SerialConnection:
    return SerialConnection.model_validate(
        {"driver": "serial", "port": "/dev/ttyRS485", "devices": {}, **extra}
    )


def test_port_settings_and_rs485_mode_reach_the_port():
    port = FakePort()
    configure_port(
        port,
        config(
            baudrate=19200,
            bytesize=7,
            parity="even",
            stopbits=2,
            flow_control="rtscts",
            rs485={"enabled": True, "rts_level_for_tx": False, "delay_before_rx_s": 0.002},
        ),
    )
    rs485 = port.settings.pop("rs485_mode")
    assert port.settings == {
        "baudrate": 19200,
        "bytesize": 7,
        "parity": serial.PARITY_EVEN,
        "stopbits": 2,
        "rtscts": True,
        "xonxoff": False,
    }
    assert isinstance(rs485, serial.rs485.RS485Settings)
    assert (rs485.rts_level_for_tx, rs485.rts_level_for_rx, rs485.delay_before_rx) == (
        False,
        False,
        0.002,
    )


def test_rs485_is_left_alone_when_disabled():
    port = FakePort()
    configure_port(port, config())
    assert "rs485_mode" not in port.settings


def test_a_refused_setting_is_device_unavailable_naming_the_port():
    with pytest.raises(DeviceUnavailable, match="/dev/ttyRS485: setting refused: Not a valid"):
        configure_port(FakePort(refuse="rs485_mode"), config(rs485={"enabled": True}))


async def test_a_port_that_cannot_open_is_connection_lost():
    error = serial.SerialException(2, "could not open port /dev/ttyRS485: No such file")
    driver = SerialDriver(config(), port_factory=lambda url: FakePort(open_error=error))
    with pytest.raises(ConnectionLost, match="cannot open"):
        async with driver.connect():
            pass


async def test_a_missing_device_path_is_connection_lost(tmp_path):
    driver = SerialDriver(config(port=str(tmp_path / "ttyUSB9")))
    with pytest.raises(ConnectionLost, match="ttyUSB9"):
        async with driver.connect():
            pass


@pytest.mark.parametrize(
    ("setting", "error"),
    [({"rs485": {"enabled": True}}, "RS485"), ({"parity": "even"}, "Invalid argument")],
)
async def test_settings_a_real_pty_refuses_are_device_unavailable(pty_pair, setting, error):
    driver = SerialDriver(config(port=str(pty_pair.gateway), **setting))
    with pytest.raises(DeviceUnavailable, match=f"setting refused: .*{error}") as info:
        async with driver.connect():
            pass
    assert not isinstance(info.value, ConnectionLost)
