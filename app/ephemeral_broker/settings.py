"""All broker settings in one pydantic-settings class.

Priority, rising: the default, the environment variable `BROKER_<NAME>`, the command-line
flag `--<name-with-dashes>` (the CLI passes flags as init arguments, which win over the
environment). Durations are integer milliseconds and sizes integer bytes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from ephemeral_broker.rules import check_namespace
from ephemeral_broker.serving.listen_address import (
    ListenAddress,
    MetricsListenError,
    parse_listen_address,
)
from ephemeral_broker.serving.unix_socket import (
    DEFAULT_SOCKET_DIR_PREFIX,
    DEFAULT_SOCKET_NAME,
    MAX_SOCKET_PATH_BYTES,
)

# What the default socket adds below $TMPDIR: "/ephemeral-broker-XXXXXXXX/broker.sock".
_DEFAULT_SUFFIX_BYTES: Final = len(f"/{DEFAULT_SOCKET_DIR_PREFIX}XXXXXXXX/{DEFAULT_SOCKET_NAME}")

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]

NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveInt = Annotated[int, Field(gt=0)]


class SocketPathTooLong(ValueError):
    pass


def check_socket_path_length(path: str | os.PathLike[str]) -> None:
    """Refuse a socket path the kernel cannot bind, with a message that says what to do."""
    length = len(os.fsencode(path))
    if length > MAX_SOCKET_PATH_BYTES:
        raise SocketPathTooLong(
            f"socket path is {length} bytes, over the {MAX_SOCKET_PATH_BYTES}-byte limit of Unix "
            f"domain sockets: {os.fspath(path)!r}; choose a shorter --socket or set TMPDIR to a "
            "shorter directory (for example TMPDIR=/tmp)"
        )


def check_default_socket_fits() -> None:
    """The default socket lives under $TMPDIR: check it fits before creating anything."""
    base = tempfile.gettempdir()
    length = len(os.fsencode(base)) + _DEFAULT_SUFFIX_BYTES
    if length > MAX_SOCKET_PATH_BYTES:
        raise SocketPathTooLong(
            f"the default socket path under TMPDIR={base!r} would be {length} bytes, over the "
            f"{MAX_SOCKET_PATH_BYTES}-byte limit of Unix domain sockets; set TMPDIR to a shorter "
            "directory (for example TMPDIR=/tmp) or pass --socket"
        )


class BrokerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BROKER_",
        extra="forbid",
        populate_by_name=True,
        validate_default=True,
        frozen=True,
    )

    socket: Path | None = Field(
        default=None,
        description="Socket path; default: a new private directory "
        "$TMPDIR/ephemeral-broker-XXXXXXXX/broker.sock (mode 0700).",
    )
    socket_mode: int = Field(
        default=0o600,
        description="Permission bits of the socket file, octal (0660 shares it with a group).",
    )
    default_ttl: PositiveInt = Field(
        default=1_800_000, description="TTL (ms) of a set without ttl_ms when require_ttl is off."
    )
    require_ttl: bool = Field(default=True, description="Refuse a set that has no ttl_ms.")
    max_ttl: PositiveInt = Field(default=86_400_000, description="Largest TTL (ms) accepted.")
    lease_ttl: PositiveInt = Field(
        default=60_000, description="TTL (ms) of a lease without ttl_ms."
    )
    max_items: NonNegativeInt = Field(
        default=10_000, description="Live keys at most; 0 = unlimited."
    )
    max_leases: NonNegativeInt = Field(
        default=10_000, description="Live leases at most, all pools together; 0 = unlimited."
    )
    max_value_size: PositiveInt = Field(
        default=262_144, description="Bytes of a value's canonical UTF-8 JSON."
    )
    max_request_size: PositiveInt = Field(
        default=1_048_576, description="Bytes of a request body, after Content-Encoding decoding."
    )
    max_key_length: PositiveInt = Field(
        default=512, description="Bytes (UTF-8) of a key, pool name or worker id."
    )
    sweeper_interval: PositiveInt = Field(
        default=1_000, description="How often (ms) expired entries are reclaimed."
    )
    refresh_ttl_on_get: bool = Field(
        default=False, description="Sliding expiry: a read restarts the key's TTL."
    )
    compression_threshold: NonNegativeInt = Field(
        default=1_024,
        description="Values (and responses) at least this many bytes are compressed; 0 = never.",
    )
    idle_timeout: NonNegativeInt = Field(
        default=0, description="Exit after this long (ms) without a request; 0 = never."
    )
    heartbeat_interval: NonNegativeInt = Field(
        default=0, description="Log a one-line status this often (ms); 0 = never."
    )
    drain_timeout: NonNegativeInt = Field(
        default=5_000, description="How long (ms) shutdown waits for requests in flight."
    )
    secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("secret", "BROKER_SECRET", "EPHEMERAL_SECRET"),
        description="Shared secret; turns auth on. From BROKER_SECRET, EPHEMERAL_SECRET or "
        "--secret-file, never from a plain flag.",
    )
    log_level: LogLevel = Field(default="info", description="debug, info, warning or error.")
    log_format: LogFormat = Field(default="text", description="text, or json (one object a line).")
    access_log: bool = Field(default=False, description="Log one line per request.")
    keep_alive_timeout: PositiveInt = Field(
        default=30_000,
        description="Close a connection idle this long (ms), counted from its opening too.",
    )
    head_timeout: PositiveInt = Field(
        default=10_000,
        description="A request line and headers must arrive within this long (ms) of their "
        "first byte; else 408 and the connection is closed.",
    )
    body_timeout: PositiveInt = Field(
        default=10_000,
        description="A request body may pause at most this long (ms) between reads; else 408 "
        "and the connection is closed.",
    )
    max_connections: PositiveInt = Field(
        default=1_000,
        description="Connections at once; one more is refused with 503 too_many_connections.",
    )
    store: str = Field(
        default="memory",
        description="Where state lives: memory (this process), or a Redis URL (redis://, "
        "rediss://, unix://) shared by the brokers of several hosts.",
    )
    namespace: str = Field(
        default="default",
        description="With a Redis store: the namespace whose keys and leases this broker shares.",
    )
    metrics_listen: str | None = Field(
        default=None,
        description="Also serve GET /metrics, /healthz and /readyz (nothing else) over TCP on "
        "HOST:PORT, or PORT on loopback; off by default.",
    )

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _parse_octal_mode(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip().lower().removeprefix("0o")
            if not text or any(ch not in "01234567" for ch in text):
                raise ValueError(
                    f"socket_mode must be octal permission bits like 0600, not {value!r}"
                )
            return int(text, 8)
        return value

    @field_validator("socket_mode")
    @classmethod
    def _mode_in_range(cls, value: int) -> int:
        if not 0 <= value <= 0o777:
            raise ValueError(f"socket_mode must be between 0000 and 0777, not {value:o}")
        if not value & 0o600 == 0o600:
            raise ValueError("socket_mode must let the owner read and write the socket (0600 bits)")
        return value

    @field_validator("socket")
    @classmethod
    def _socket_fits(cls, value: Path | None) -> Path | None:
        if value is not None:
            check_socket_path_length(value)
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("store")
    @classmethod
    def _store_url(cls, value: str) -> str:
        value = value.strip()
        if value == "memory" or value.startswith(("redis://", "rediss://", "unix://")):
            return value
        raise ValueError(
            "store must be memory, or a Redis URL starting with redis://, rediss:// or unix://"
        )

    @field_validator("namespace")
    @classmethod
    def _namespace_name(cls, value: str) -> str:
        check_namespace(value)
        return value

    @field_validator("metrics_listen")
    @classmethod
    def _listen_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(parse_listen_address(value))
        except MetricsListenError as exc:
            raise ValueError(str(exc)) from None

    @property
    def metrics_address(self) -> ListenAddress | None:
        return None if self.metrics_listen is None else parse_listen_address(self.metrics_listen)

    @field_validator("secret")
    @classmethod
    def _secret_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            raise ValueError("the secret must not be empty")
        return value

    @model_validator(mode="after")
    def _ttls_within_max(self) -> BrokerSettings:
        for name in ("default_ttl", "lease_ttl"):
            if getattr(self, name) > self.max_ttl:
                raise ValueError(
                    f"{name} ({getattr(self, name)} ms) is above max_ttl ({self.max_ttl} ms)"
                )
        return self

    @property
    def auth_enabled(self) -> bool:
        return self.secret is not None


def env_name(field: str) -> str:
    return f"BROKER_{field.upper()}"


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def describe_settings_error(error: ValidationError) -> str:
    """One line for a failed start-up: each bad setting, its value, where it may come from."""
    parts = []
    for item in error.errors(include_url=False):
        field = str(item["loc"][0]) if item["loc"] else ""
        message = str(item["msg"]).removeprefix("Value error, ")
        if field and field in BrokerSettings.model_fields and field != "secret":
            shown = item.get("input")
            parts.append(f"{field}={shown!r} ({env_name(field)} or {flag_name(field)}): {message}")
        elif field in ("secret", "BROKER_SECRET", "EPHEMERAL_SECRET"):
            parts.append(f"secret (BROKER_SECRET, EPHEMERAL_SECRET or --secret-file): {message}")
        elif field:
            parts.append(f"{field}: {message}")
        else:
            parts.append(message)
    return "invalid settings: " + "; ".join(parts)
