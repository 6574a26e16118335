"""Issue 24, "installed like a tool": the wheel carries the whole package (the
tokenizers, templates, static files, defaults and the pytest plugin), and
`uv tool install` and `pipx install` of it each give a `meter` on the PATH that
runs the proxy, meters a call of the official openai SDK and reports it.

Offline, as in CI: the tools install the wheel and its dependencies with no index,
from the wheelhouse `make install-test` downloads from the run lock
(.venv/wheelhouse), into fresh environments of their own."""

import json
import os
import shutil
import subprocess
import sys
import threading
import tomllib
import zipfile
from pathlib import Path

import openai
import pytest

from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.proxy_harness import VENV_BIN, write_config

pytestmark = pytest.mark.e2e  # builds and installs the wheel, runs its meter

ROOT = Path(__file__).resolve().parents[1]
WHEELHOUSE = VENV_BIN.parent / "wheelhouse"
NOT_OURS = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", "build", "dist", "*.egg-info")
CHAT = {f.name: f for f in ALL}["openai/chat_nonstream_cached_tokens"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """taskmeter's wheel, built by pip from a copy of the tree (a build writes beside the sources)."""
    folder = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, folder / "tree", ignore=NOT_OURS)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(folder), "./tree"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (built,) = folder.glob("taskmeter-*.whl")
    return built


def test_the_wheel_carries_every_file_of_the_package(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(name for name in names if name.endswith(".dist-info/METADATA"))).decode()
        entry_points = archive.read(next(name for name in names if name.endswith(".dist-info/entry_points.txt"))).decode()
    ours = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "taskmeter").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    assert ours - names == set(), "the wheel lacks these: add them to [tool.setuptools.package-data]"
    assert {
        "taskmeter/recorder/bpe/o200k_base.tiktoken.gz",
        "taskmeter/recorder/bpe/cl100k_base.tiktoken.gz",
        "taskmeter/config/defaults.toml",
        "taskmeter/dashboard/templates/base.html",
        "taskmeter/dashboard/static/dashboard.js",
        "taskmeter/service/templates/taskmeter.service",
        "taskmeter/service/templates/org.taskmeter.proxy.plist",
        "taskmeter/automation/pytest_plugin/taskmeter_pytest.py",
    } <= names
    assert not [name for name in names if name.startswith(("tests/", "bench/", "docs/")) or "__pycache__" in name]
    assert "meter = taskmeter.cli:main" in entry_points
    assert "License-Expression: MIT" in metadata and any(name.endswith("/licenses/LICENSE") for name in names)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for field in ("Author-email", "Classifier", "Keywords", "Requires-Python"):
        assert f"\n{field}: " in metadata, field
    assert len(project["classifiers"]) >= 5


def _tool_environment(tmp_path: Path) -> dict[str, str]:
    """An environment with nothing of ours: a home of its own, no index (the wheelhouse only)."""
    assert WHEELHOUSE.is_dir(), f"no wheelhouse at {WHEELHOUSE}: `make install-test` downloads it"
    home = tmp_path / "home"
    home.mkdir()
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("VIRTUAL_ENV", "PIP_", "UV_", "PIPX_", "METER_"))
    }
    env.update(
        HOME=str(home),
        PATH=f"{tmp_path / 'bin'}:/usr/bin:/bin",
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(WHEELHOUSE),
        PIP_CONFIG_FILE=os.devnull,  # no machine-wide index or constraints
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        UV_OFFLINE="1",
        UV_NO_CONFIG="1",
        UV_PYTHON_DOWNLOADS="never",
        UV_CACHE_DIR=str(tmp_path / "uv-cache"),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local/share"),
        XDG_STATE_HOME=str(home / ".local/state"),
        XDG_CACHE_HOME=str(home / ".cache"),
    )
    return env


def _installed_meter_works(meter: Path, tool_python: Path, env: dict[str, str], tmp_path: Path) -> None:
    """The installed `meter` on the PATH: a proxy, a call through it, a report."""
    assert meter.exists() and str(tool_python).startswith(str(tmp_path)), "the tool's own environment, not ours"
    version = subprocess.run(["meter", "--version"], capture_output=True, text=True, env=env, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("meter, version"), version.stderr
    with FakeUpstream() as upstream:
        upstream.routes["/v1/chat/completions"] = Scenario(body=CHAT.body)
        config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"})
        config.chmod(0o600)
        db = tmp_path / "meter.db"
        proxy = subprocess.Popen(
            ["meter", "proxy", "--port", "0", "--config", str(config), "--db", str(db)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        errors: list[str] = []
        threading.Thread(target=lambda: errors.extend(proxy.stderr), daemon=True).start()
        try:
            line = proxy.stdout.readline()
            assert "listening on" in line, "".join(errors)
            threading.Thread(target=lambda: proxy.stdout.read(), daemon=True).start()
            origin = "http://" + line.split("listening on ")[1].split(",")[0]
            client = openai.OpenAI(base_url=f"{origin}/t/P24-002/openai/v1", api_key="sk-test", max_retries=0)
            answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
            assert answer.usage is not None
        finally:
            proxy.terminate()
            proxy.wait(30)
        assert proxy.returncode == 0, "".join(errors)
    report = subprocess.run(
        ["meter", "report", "models", "--json", "--db", str(db)], capture_output=True, text=True, env=env, timeout=60
    )
    assert report.returncode == 0, report.stderr
    report_json = json.loads(report.stdout)
    assert [model["ai_interactions"] for model in report_json["models"]] == [1]
    log = subprocess.run(["meter", "log", "--json", "--db", str(db)], capture_output=True, text=True, env=env, timeout=60)
    calls = json.loads(log.stdout)
    assert [(call["task_id"], call["http_status"]) for call in calls] == [("P24-002", 200)]
    # The tokenizers ship in the wheel: the tool's interpreter counts with them, offline.
    counted = subprocess.run(
        [
            str(tool_python),
            "-c",
            "from taskmeter.recorder.estimate import count_tokens; print(count_tokens('hello world', 'gpt-4o'))",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert (counted.returncode, counted.stdout.strip()) == (0, "2"), counted.stderr


def test_uv_tool_install_gives_a_working_meter(wheel, tmp_path):
    env = _tool_environment(tmp_path)
    env.update(UV_TOOL_DIR=str(tmp_path / "tools"), UV_TOOL_BIN_DIR=str(tmp_path / "bin"))
    uv = VENV_BIN / "uv"
    install = subprocess.run(
        [str(uv), "tool", "install", "--no-index", "--find-links", str(WHEELHOUSE), "--python", sys._base_executable, str(wheel)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr
    _installed_meter_works(tmp_path / "bin" / "meter", tmp_path / "tools" / "taskmeter" / "bin" / "python", env, tmp_path)


def test_pipx_install_gives_a_working_meter(wheel, tmp_path):
    env = _tool_environment(tmp_path)
    env.update(PIPX_HOME=str(tmp_path / "pipx"), PIPX_BIN_DIR=str(tmp_path / "bin"), PIPX_MAN_DIR=str(tmp_path / "man"))
    install = subprocess.run(
        [str(VENV_BIN / "pipx"), "install", "--backend", "pip", "--python", sys._base_executable, str(wheel)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    _installed_meter_works(
        tmp_path / "bin" / "meter", tmp_path / "pipx" / "venvs" / "taskmeter" / "bin" / "python", env, tmp_path
    )
