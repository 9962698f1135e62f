"""The built wheel, installed into a fresh virtual environment beside a user's project that has
its own `app/`, `client/` and `client.py`: nothing of ours shadows theirs, and theirs never
shadows ours, with the pytest plugin off, on (`--broker -n 2`), and under `run`.

The wheel is built from a copy of the sources without build isolation (offline). The fresh
environment gets only our wheel installed; the third-party packages it depends on (FastAPI,
httpx, pytest …) are borrowed from the development environment through a path entry, so the
test needs no package index. That entry is a plain directory on sys.path: the development
environment's editable install of this project is not activated by it, and the test checks
that every module of ours comes from the fresh environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import ROOT

SOURCES = ("pyproject.toml", "README.md", "app", "client")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name,
                source / name,
                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
            )
        else:
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-build-isolation",
            "--no-deps",
            "--no-index",
            str(source),
            "--wheel-dir",
            str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (built,) = out.glob("ephemeral_broker-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Iterator[Path]:
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    yield venv


@pytest.fixture
def user_project(tmp_path: Path) -> Path:
    """A project with the usual FastAPI layout (`app/`), a `client/` package, and a `client.py`
    beside a script, each of which used to break the broker or be broken by it."""
    project = tmp_path / "project"
    files = {
        "app/__init__.py": 'OWNER = "user"\n',
        "app/main.py": "from app import OWNER\n",
        "client/__init__.py": 'OWNER = "user"\n',
        "tests/__init__.py": "",
        "tests/test_own_packages.py": (
            "import app, client, ephemeral_broker_client\n"
            "def test_the_projects_own_packages_are_its_own():\n"
            "    assert app.OWNER == client.OWNER == 'user'\n"
            "    assert 'venv' in ephemeral_broker_client.__file__\n"
        ),
        "tests/test_with_broker.py": (
            "def test_the_broker_fixture(broker, broker_worker_slot):\n"
            "    broker.set(f'slot-{broker_worker_slot}', 'taken', ttl_ms=60_000)\n"
            "    assert broker.get(f'slot-{broker_worker_slot}') == 'taken'\n"
            "    assert broker_worker_slot in (0, 1)\n"
            "def test_a_second_test(broker):\n"
            "    assert broker.incr('tests-run', ttl_ms=60_000) >= 1\n"
        ),
        "scripts/client.py": "raise SystemExit('the user project client.py was imported')\n",
        "scripts/use_broker.py": (
            "from ephemeral_broker_client import BrokerClient\n"
            "import ephemeral_broker, ephemeral_broker_client\n"
            "with BrokerClient() as broker:\n"
            "    broker.set('from-script', [1, 2], ttl_ms=60_000)\n"
            "    print(broker.get('from-script'), ephemeral_broker.__file__,\n"
            "          ephemeral_broker_client.__file__, sep='\\n')\n"
        ),
    }
    for name, text in files.items():
        path = project / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return project


def run_in(project: Path, venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EPHEMERAL_", "BROKER_"))}
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    env["TMPDIR"] = "/tmp"
    return subprocess.run(
        args, cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_wheel_installs_only_project_unique_import_names(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = {name.split("/", 1)[0] for name in names}
        entry_points = archive.read(
            next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        ).decode()
    dist_info = next(n for n in top_level if n.endswith(".dist-info"))
    assert top_level == {"ephemeral_broker", "ephemeral_broker_client", dist_info}
    assert "ephemeral_broker/py.typed" in names
    assert "ephemeral_broker_client/py.typed" in names
    assert "ephemeral_broker = ephemeral_broker_client.pytest_plugin" in entry_points
    assert "epb = ephemeral_broker.cli.main:main" in entry_points


def test_a_users_pytest_without_the_plugin_enabled(user_project: Path, fresh_venv: Path) -> None:
    result = run_in(
        user_project,
        fresh_venv,
        "python",
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "tests/test_own_packages.py",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_a_users_pytest_with_broker_and_xdist(user_project: Path, fresh_venv: Path) -> None:
    result = run_in(
        user_project,
        fresh_venv,
        "python",
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "--broker",
        "-n",
        "2",
        "tests",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_a_users_script_beside_its_own_client_py_under_run(
    user_project: Path, fresh_venv: Path
) -> None:
    result = run_in(
        user_project, fresh_venv, "ephemeral-broker", "run", "--", "python", "scripts/use_broker.py"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    value, server_file, client_file = result.stdout.splitlines()
    assert value == "[1, 2]"
    for path in (server_file, client_file):
        assert Path(path).is_relative_to(fresh_venv), path
