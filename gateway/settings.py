"""The gateway's settings (DESIGN §4): declared once here, read from a TOML file and `DEFED_…` variables.

Precedence, highest first: environment (`DEFED_MQTT__HOST=…`, `__` for nesting), then the TOML
file given by `--config`, then the defaults below. `configs/gateway.toml` shows every setting.
"""

from __future__ import annotations

import os
import socket
import ssl
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.errors import UserError
from gateway.review.listen import ListenError, parse_listen

MqttProtocol = Literal["5", "3.1.1"]
DeviceChoice = Literal["auto", "cpu", "cuda"]
BackendChoice = Literal["auto", "torch", "onnxruntime"]
PrecisionChoice = Literal["fp32", "fp16", "bf16"]
LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]


def default_client_id() -> str:
    # Stable across restarts on the same host: the broker keeps the persistent session (and the
    # frames queued while we were down) under this id, so a random id would lose them.
    return f"defed-gateway-{socket.gethostname()}"


def default_state_dir() -> Path:
    # systemd's StateDirectory= exports the directory it created.
    return Path(os.environ.get("STATE_DIRECTORY", "/var/lib/defed").split(":")[0])


def default_cache_dir(state_dir: Path) -> Path:
    # systemd's CacheDirectory= exports the directory it created; elsewhere, beside the state.
    cache = os.environ.get("CACHE_DIRECTORY")
    return Path(cache.split(":")[0]) if cache else state_dir / "cache"


class Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttSettings(Group):
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    protocol: MqttProtocol = "5"
    client_id: str = Field(default_factory=default_client_id, min_length=1, max_length=128)
    username: str | None = None
    password: SecretStr | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    keepalive_s: int = Field(30, ge=5, le=65535)
    qos: Literal[0, 1] = 1
    session_expiry_s: int = Field(86400, ge=1, le=4294967295)
    reconnect_min_s: int = Field(1, ge=1)
    reconnect_max_s: int = Field(30, ge=1)
    input_topic: str = "cameras/+/frames"
    output_prefix: str = "defed"
    shared_group: str | None = None

    @field_validator("input_topic")
    @classmethod
    def one_device_wildcard(cls, topic: str) -> str:
        levels = topic.split("/")
        if levels.count("+") != 1 or "#" in topic:
            raise ValueError("must contain exactly one '+' level (the device id) and no '#'")
        return topic

    @field_validator("output_prefix")
    @classmethod
    def plain_prefix(cls, prefix: str) -> str:
        if not prefix or any(c in prefix for c in "+#") or prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError("must be a topic prefix without wildcards or leading/trailing '/'")
        return prefix

    @field_validator("tls_ca", "tls_cert", "tls_key")
    @classmethod
    def readable_file(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        if not path.is_file():
            raise ValueError(f"no such file: {path}")
        try:
            with path.open("rb") as f:
                f.read(1)
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
        return path

    @model_validator(mode="after")
    def tls_files_load(self) -> MqttSettings:
        """Certificates that do not load are a bad setting, reported before anything starts."""
        if self.tls_key is not None and self.tls_cert is None:
            raise ValueError("tls_key is set without tls_cert")
        self.tls_context()
        return self

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context for the broker connection, or None when no TLS file is set.

        The broker's certificate is verified (against `tls_ca`, else the system's CAs), host name
        included; `tls_cert`/`tls_key` are our client certificate, when the broker asks for one.
        """
        if self.tls_ca is None and self.tls_cert is None:
            return None
        try:
            context = ssl.create_default_context(cafile=str(self.tls_ca) if self.tls_ca else None)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"tls_ca {self.tls_ca} is not a CA certificate file: {exc}") from None
        if self.tls_cert is not None:
            try:
                context.load_cert_chain(str(self.tls_cert), str(self.tls_key) if self.tls_key else None)
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(f"tls_cert {self.tls_cert} / tls_key {self.tls_key} do not load as a "
                                 f"certificate and its key: {exc}") from None
        return context


class BatchingSettings(Group):
    max_batch: int = Field(64, ge=1, le=4096)
    max_wait_ms: float = Field(10.0, ge=0, le=10_000)
    queue_capacity: int = Field(1024, ge=1, le=65535)


class ModelSettings(Group):
    bundle: str = "mnist"
    device: DeviceChoice = "auto"
    backend: BackendChoice = "auto"
    precision: PrecisionChoice = "fp32"
    threads: int = Field(0, ge=0, le=1024)
    # Where ONNX Runtime's exported graph is kept between starts; unset: default_cache_dir.
    cache_dir: Path | None = None


class AuditSettings(Group):
    url: str | None = None
    store_images: bool = True
    retention_days: float = Field(0, ge=0)


class MetricsSettings(Group):
    listen: str | None = "127.0.0.1:9464"
    per_device: bool = False

    @field_validator("listen")
    @classmethod
    def host_port(cls, listen: str | None) -> str | None:
        if not listen:
            return None
        _host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT, or empty to disable metrics")
        return listen


class ReviewSettings(Group):
    """`defed quarantine serve`: the read-only review page over the audit log."""

    listen: str = "127.0.0.1:8088"
    username: str = Field("defed", min_length=1)
    password: SecretStr | None = None
    page_size: int = Field(50, ge=1, le=500)

    @field_validator("listen")
    @classmethod
    def host_port(cls, listen: str) -> str:
        try:
            parse_listen(listen)
        except ListenError as exc:
            raise ValueError(str(exc)) from None
        return listen

    @field_validator("username")
    @classmethod
    def no_colon(cls, username: str) -> str:
        if ":" in username:
            raise ValueError("must not contain ':' (HTTP Basic auth separates user and password with it)")
        return username

    @field_validator("password")
    @classmethod
    def not_empty(cls, password: SecretStr | None) -> SecretStr | None:
        if password is not None and not password.get_secret_value():
            raise ValueError("must not be empty (leave it unset for no password)")
        return password


class LogSettings(Group):
    level: LogLevel = "info"
    format: LogFormat = "auto"


class GatewaySettings(BaseSettings):
    """Everything `defed serve` reads."""

    model_config = SettingsConfigDict(
        env_prefix="DEFED_", env_nested_delimiter="__", extra="forbid", frozen=True, case_sensitive=False,
    )

    state_dir: Path = Field(default_factory=default_state_dir)
    stats_interval_s: float = Field(10.0, gt=0)
    drain_timeout_s: float = Field(10.0, gt=0)
    max_payload_bytes: int = Field(10 * 1024 * 1024, ge=1, le=256 * 1024 * 1024)
    # mypy without pydantic's plugin cannot see that every field of a group has a default.
    mqtt: MqttSettings = Field(default_factory=MqttSettings)  # type: ignore[arg-type]
    batching: BatchingSettings = Field(default_factory=BatchingSettings)  # type: ignore[arg-type]
    model: ModelSettings = Field(default_factory=ModelSettings)  # type: ignore[arg-type]
    audit: AuditSettings = Field(default_factory=AuditSettings)  # type: ignore[arg-type]
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)  # type: ignore[arg-type]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init arguments; the environment must win over it.
        return env_settings, init_settings

    @property
    def audit_url(self) -> str:
        return self.audit.url or f"sqlite:///{self.state_dir / 'audit.sqlite3'}"

    @property
    def model_cache_dir(self) -> Path:
        return self.model.cache_dir or default_cache_dir(self.state_dir)

    @property
    def frame_topic(self) -> str:
        """The subscription: the input filter, behind `$share/{group}/` when a group is set."""
        group = self.mqtt.shared_group
        return f"$share/{group}/{self.mqtt.input_topic}" if group else self.mqtt.input_topic


def describe(error: ValidationError) -> str:
    """A ValidationError as one line that names every bad setting."""
    parts = []
    for e in error.errors():
        name = ".".join(str(p) for p in e["loc"]) or "settings"
        message = e["msg"].removeprefix("Value error, ")
        # A secret's value is never echoed, whatever is wrong with it.
        secret = any("password" in str(p) for p in e["loc"])
        shown = "" if e["type"] in ("missing", "extra_forbidden") or secret else f" (got {e['input']!r})"
        parts.append(f"{name}: {message}{shown}")
    return "invalid setting " + "; ".join(parts)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path} is not valid TOML: {exc}") from None


def load_settings(path: Path | None = None) -> GatewaySettings:
    """Settings from `path` (if given) and the environment; a UserError naming any bad one."""
    values = read_toml(path) if path is not None else {}
    try:
        return GatewaySettings(**values)
    except ValidationError as exc:
        raise UserError(describe(exc)) from None
