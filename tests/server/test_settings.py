"""Settings: defaults, BROKER_* environment, flags (which win), and exit 2 on bad values."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from ephemeral_broker.cli.main import build_parser
from ephemeral_broker.cli.settings_flags import settings_from_args
from ephemeral_broker.settings import BrokerSettings, describe_settings_error
from tests.support.brokers import BROKER_EXE


def from_flags(*argv: str) -> BrokerSettings:
    return settings_from_args(build_parser().parse_args(["serve", *argv]))


def run_serve(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [BROKER_EXE, "serve", *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def test_defaults_match_the_spec() -> None:
    settings = BrokerSettings()
    assert settings.model_dump() == {
        "socket": None,
        "socket_mode": 0o600,
        "default_ttl": 1_800_000,
        "require_ttl": True,
        "max_ttl": 86_400_000,
        "lease_ttl": 60_000,
        "max_items": 10_000,
        "max_leases": 10_000,
        "max_value_size": 262_144,
        "max_request_size": 1_048_576,
        "max_key_length": 512,
        "sweeper_interval": 1000,
        "refresh_ttl_on_get": False,
        "compression_threshold": 1024,
        "idle_timeout": 0,
        "heartbeat_interval": 0,
        "drain_timeout": 5000,
        "secret": None,
        "log_level": "info",
        "log_format": "text",
        "access_log": False,
        "keep_alive_timeout": 30_000,
        "head_timeout": 10_000,
        "body_timeout": 10_000,
        "max_connections": 1000,
        "store": "memory",
        "namespace": "default",
        "metrics_listen": None,
    }


def test_every_setting_has_a_flag() -> None:
    serve_help = subprocess.run(
        [BROKER_EXE, "serve", "--help"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    for name in BrokerSettings.model_fields:
        if name != "secret":
            assert "--" + name.replace("_", "-") in serve_help, name
    assert "--secret-file" in serve_help


def test_environment_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_MAX_ITEMS", "50")
    monkeypatch.setenv("BROKER_REQUIRE_TTL", "false")
    monkeypatch.setenv("BROKER_SOCKET_MODE", "0660")
    monkeypatch.setenv("BROKER_LOG_LEVEL", "DEBUG")
    settings = from_flags()
    assert (settings.max_items, settings.require_ttl, settings.socket_mode) == (50, False, 0o660)
    assert settings.log_level == "debug"
    flagged = from_flags("--max-items", "7", "--require-ttl", "--socket-mode", "0640")
    assert (flagged.max_items, flagged.require_ttl, flagged.socket_mode) == (7, True, 0o640)


def test_secret_comes_from_env_or_file_never_a_flag(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EPHEMERAL_SECRET", "from-ephemeral")
    assert from_flags().secret is not None
    assert from_flags().secret.get_secret_value() == "from-ephemeral"  # type: ignore[union-attr]
    monkeypatch.setenv("BROKER_SECRET", "from-broker")
    assert from_flags().secret.get_secret_value() == "from-broker"  # type: ignore[union-attr]
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    settings = from_flags("--secret-file", str(secret_file))
    assert settings.secret.get_secret_value() == "from-file"  # type: ignore[union-attr]
    assert "from-file" not in repr(settings) and "from-file" not in str(settings.model_dump())
    result = run_serve("--secret", "hunter2")
    assert result.returncode == 2
    assert "--secret-file" in result.stderr
    assert "hunter2" not in result.stderr


@pytest.mark.parametrize(
    ("flags", "env", "needle"),
    [
        (["--max-value-size", "-1"], {}, "max_value_size"),
        (["--max-items", "-5"], {}, "max_items"),
        (["--max-items", "lots"], {}, "max_items"),
        ([], {"BROKER_MAX_REQUEST_SIZE": "-1"}, "BROKER_MAX_REQUEST_SIZE"),
        ([], {"BROKER_LOG_LEVEL": "verbose"}, "log_level"),
        (["--socket-mode", "0999"], {}, "socket_mode"),
        (["--socket-mode", "0400"], {}, "socket_mode"),
        (["--default-ttl", "0"], {}, "default_ttl"),
        (["--lease-ttl", "90000000"], {}, "lease_ttl"),
        (["--sweeper-interval", "0"], {}, "sweeper_interval"),
        (["--drain-timeout", "1.5"], {}, "drain_timeout"),
        ([], {"BROKER_SECRET": ""}, "secret"),
        (["--secret-file", "/nonexistent/secret"], {}, "secret-file"),
    ],
)
def test_invalid_settings_stop_start_up_with_one_line_and_exit_2(
    flags: list[str], env: dict[str, str], needle: str
) -> None:
    result = run_serve(*flags, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ephemeral-broker: ")
    assert needle in lines[0]
    assert result.stdout == ""


def test_unknown_log_level_flag_is_a_usage_error() -> None:
    result = run_serve("--log-level", "chatty")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


@pytest.mark.defect(17)
def test_socket_path_over_107_bytes_names_the_length_and_a_fix(tmp_path: Path) -> None:
    """Defect 17: a long TMPDIR made socket creation fail with a cryptic error."""
    long_path = "/tmp/" + "d" * 100 + "/broker.sock"
    result = run_serve("--socket", long_path)
    assert result.returncode == 2
    message = result.stderr.strip()
    assert f"{len(long_path)} bytes" in message and "107" in message and "TMPDIR" in message
    # The default socket under a long TMPDIR is refused before anything is created.
    deep = tmp_path / ("t" * 90)
    deep.mkdir()
    result = run_serve(env={"TMPDIR": str(deep)})
    assert result.returncode == 2
    assert "TMPDIR" in result.stderr and "107" in result.stderr
    assert list(deep.iterdir()) == []
    # 107 bytes exactly is accepted by the settings.
    exact = "/tmp/" + "e" * (107 - len("/tmp/") - len("/b.sock")) + "/b.sock"
    assert len(exact) == 107
    assert BrokerSettings(socket=Path(exact)).socket == Path(exact)


def test_settings_error_description_is_one_line_for_many_errors() -> None:
    with pytest.raises(ValidationError) as caught:
        BrokerSettings(max_items=-1, max_value_size=0, log_format="xml")  # type: ignore[arg-type]
    line = describe_settings_error(caught.value)
    assert "\n" not in line
    for name in ("max_items=-1", "max_value_size=0", "log_format"):
        assert name in line
