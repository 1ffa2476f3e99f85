"""The configuration model: every key, its default, its unit and why it exists.

Loading (files, conf.d, environment, error reporting) lives in `gatewayd.config_load`; this
module is only the shape, so the JSON schema and docs/configuration.md come from one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gatewayd.registry import BUILTIN

__all__ = [
    "ApiConfig",
    "ApiToken",
    "CloudConfig",
    "ConnectionSettings",
    "GatewayConfig",
    "LoggingConfig",
    "OutboxConfig",
    "Settings",
    "ShadowConfig",
    "TlsConfig",
]

_NODE_ID = r"^[A-Za-z0-9_-]{1,64}$"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GatewayConfig(_Section):
    """Identity of the gateway itself (a device of node type GATEWAY)."""

    node_id: str = Field(
        pattern=_NODE_ID,
        description="Physical identifier of the gateway, e.g. its serial number or MAC.",
    )
    product_id: str = Field(default="gatewayd", description="Product model of the gateway.")
    device_id: str | None = Field(
        default=None,
        max_length=128,
        description="Cloud device id; defaults to `{product_id}_{node_id}`.",
    )
    name: str | None = Field(default=None, description="Display name of the gateway.")
    claim_id: str | None = Field(
        default=None,
        description="Claim id printed on the label, for the claim -> provision flow.",
    )
    secret_file: Path | None = Field(
        default=None,
        description="File holding the device secret (relative: under $CREDENTIALS_DIRECTORY).",
    )
    cert_file: Path | None = Field(default=None, description="Client certificate (PEM).")
    key_file: Path | None = Field(default=None, description="Client private key (PEM).")

    @property
    def effective_device_id(self) -> str:
        """The device id, defaulted the way the registry does it."""
        return self.device_id or f"{self.product_id}_{self.node_id}"


class TlsConfig(_Section):
    """TLS towards the broker."""

    enabled: bool = Field(default=False, description="Use TLS (port default becomes 8883).")
    ca_file: Path | None = Field(
        default=None, description="CA bundle to verify the broker; system CAs when unset."
    )
    cert_file: Path | None = Field(default=None, description="Client certificate (PEM).")
    key_file: Path | None = Field(default=None, description="Client private key (PEM).")


class CloudConfig(_Section):
    """The MQTT link to the cloud. With no `host`, the gateway runs offline and buffers."""

    dialect: Literal["native"] = Field(
        default="native",
        description=(
            "Topic and payload conventions spoken to the cloud (docs/protocol.md); native is "
            "the only one implemented, and any other value is refused."
        ),
    )
    host: str | None = Field(default=None, description="Broker host; unset = no cloud link.")
    port: int | None = Field(
        default=None, ge=1, le=65535, description="Broker port; 8883 with TLS, else 1883."
    )
    tls: TlsConfig = Field(default_factory=TlsConfig)
    username: str | None = Field(default=None, description="MQTT username.")
    password_file: Path | None = Field(
        default=None, description="File holding the MQTT password (never put it in YAML)."
    )
    access_key_file: Path | None = Field(
        default=None,
        description="File holding the access key sent as a user property (TLS only).",
    )
    client_id: str | None = Field(
        default=None, description="MQTT client id; defaults to the gateway's device id."
    )
    keepalive_s: int = Field(default=60, ge=5, le=1200, description="MQTT keep-alive.")
    connect_timeout_s: float = Field(default=10.0, gt=0, description="Bound on one connect.")
    mqtt_version: Literal["auto", "5", "3.1.1"] = Field(
        default="auto", description="auto tries MQTT 5 and falls back to 3.1.1."
    )
    rate_limit_msg_s: float = Field(
        default=50.0, gt=0, description="Most messages per second sent (the cloud's quota)."
    )
    reconnect_initial_s: float = Field(default=0.2, gt=0, description="First reconnect delay.")
    reconnect_max_s: float = Field(
        default=1.5,
        gt=0,
        description=(
            "Longest reconnect delay (full jitter below it): the worst wait for the first "
            "publish after the broker returns. One connect attempt per gateway this often is "
            "cheap for a broker; raise it for very large fleets."
        ),
    )

    @property
    def effective_port(self) -> int:
        """The port, defaulted by TLS."""
        return self.port or (8883 if self.tls.enabled else 1883)


class OutboxConfig(_Section):
    """The durable store-and-forward buffer for everything bound to the cloud."""

    max_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1024, description="Most payload bytes kept."
    )
    max_age_s: float = Field(
        default=7 * 24 * 3600.0, gt=0, description="Records older than this are dropped."
    )
    policy: Literal["drop_oldest", "reject_new"] = Field(
        default="drop_oldest", description="What happens at max_bytes."
    )
    durability: Literal["batched", "full"] = Field(
        default="batched",
        description="full: every record written and fsynced at once; batched: see batch_window_ms.",
    )
    batch_window_ms: int = Field(
        default=200,
        ge=1,
        le=10_000,
        description=(
            "When batched: the file is synced at least this often, and telemetry waits in "
            "memory this long for the broker's acknowledgement before it is written (what is "
            "acknowledged meanwhile is never written). The most of the unacknowledged "
            "telemetry a crash of the daemon can lose; a power cut, twice it."
        ),
    )
    min_free_bytes: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Free-disk floor of the state directory's file system: below it new records are "
            "not written but held in memory (held_max_bytes at most, the policy beyond) and "
            "sent from there. Unset: 2 % of the file system's size, at most 64 MiB (a 100 MB "
            "partition gets 2 MB)."
        ),
    )
    held_max_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description=(
            "Most payload bytes held in memory while the disk takes no records (below "
            "min_free_bytes, full, or failing); beyond it the policy applies (drop_oldest "
            "drops the oldest held records, reject_new refuses new ones), and every drop is "
            "counted."
        ),
    )


class ShadowConfig(_Section):
    """Device shadows in the state database."""

    reported_flush_ms: int = Field(
        default=1000,
        ge=0,
        le=60_000,
        description=(
            "How stale the stored reported state may be: the field's latest values are "
            "written at most once per this many ms (reads through the API see them at once); "
            "0 writes every reading as soon as it arrives."
        ),
    )


class ApiToken(_Section):
    """A local API token, stored as its SHA-256 hex digest."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 hex of the token.")
    scope: Literal["read", "admin"] = Field(default="read", description="What it may do.")


class ApiConfig(_Section):
    """The local REST API."""

    enabled: bool = Field(default=True, description="Serve the local API.")
    host: str = Field(default="127.0.0.1", description="Address to bind.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port to bind (0: any free).")
    project_id: str = Field(
        default="local", description="The {project_id} the IoTDA surface answers to."
    )
    tokens: dict[str, ApiToken] = Field(
        default_factory=dict, description="Tokens keyed by a name for audit logs."
    )
    max_connections: int = Field(
        default=256,
        ge=1,
        le=4096,
        description="Open connections at most. A new one beyond it closes the connection "
        "that has waited longest for a request; when every one is busy, the new one is closed. "
        "Keep it well below the process's file limit (LimitNOFILE).",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Seconds a new connection has to send its first request's headers.",
    )
    keepalive_timeout_s: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="Seconds a connection may wait after a reply without a whole new request "
        "(idle, or headers still arriving) before it is closed.",
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="Seconds a request body (at most 1 MiB) has to arrive; then 408.",
    )


class LoggingConfig(_Section):
    """Logging."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO")
    journal: Literal["auto", "yes", "no"] = Field(
        default="auto", description="Structured journald fields; auto = when stderr is the journal."
    )


def _connection_union() -> Any:
    models = tuple(spec.config for spec in BUILTIN)
    if len(models) == 1:
        return models[0]
    return Annotated[Union[models], Field(discriminator="driver")]  # noqa: UP007


if TYPE_CHECKING:
    from gatewayd.driver import ConnectionConfig as ConnectionSettings
else:
    ConnectionSettings = _connection_union()


class Settings(BaseSettings):
    """The whole configuration of one gatewayd instance."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix="GATEWAYD_",
        env_nested_delimiter="__",
        nested_model_default_partial_update=True,
    )

    gateway: GatewayConfig
    cloud: CloudConfig = Field(default_factory=CloudConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    shadows: ShadowConfig = Field(default_factory=ShadowConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    state_dir: Path = Field(
        default=Path("/var/lib/gatewayd"), description="Registry, shadows and the outbox."
    )
    products: Path | None = Field(
        default=None,
        description="Directory of product YAML files; relative to the main config file.",
    )
    connections: dict[str, ConnectionSettings] = Field(
        default_factory=dict, description="Field connections keyed by id."
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _parents_exist(self) -> Settings:
        for conn_id, conn in self.connections.items():
            devices: dict[str, Any] = getattr(conn, "devices", {})
            for dev_id, dev in devices.items():
                if dev.parent is not None and dev.parent not in devices:
                    msg = (
                        f"connections.{conn_id}.devices.{dev_id}.parent: "
                        f"no device {dev.parent!r} on this connection"
                    )
                    raise ValueError(msg)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment beats the YAML files, which arrive merged as init arguments."""
        del settings_cls, dotenv_settings, file_secret_settings
        return (env_settings, init_settings)
