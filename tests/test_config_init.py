"""Issue 24, the config items: `meter config init` writes every setting that
`meter config show` lists, and a config file that is named (--config or
$METER_CONFIG) but absent is refused by every command, naming `meter config
init`, while `meter config path` says the same."""

import json
import os
import re
import subprocess
import tomllib

import pytest

from tests.proxy_harness import VENV_BIN


def _starter_settings(text: str) -> dict[str, tuple[str, str, object]]:
    """The settings the starter file holds, commented, by dotted name: each
    `# key = value` line that is TOML on its own, under its `# [section]`."""
    found, section = {}, ""
    for line in text.splitlines():
        body = line.removeprefix("# ")
        if re.fullmatch(r"\[[\w.]+\]", body):
            section = body.strip("[]")
            continue
        try:
            parsed = tomllib.loads(body)
        except tomllib.TOMLDecodeError:
            continue  # prose
        for key, value in parsed.items():
            found[f"{section}.{key}"] = (section, key, value)
    return found


def test_init_writes_every_setting_that_show_lists(meter, tmp_path):
    config = tmp_path / "config.toml"
    assert meter("config", "init", "--config", str(config)).code == 0
    written = set(_starter_settings(config.read_text()))
    shown = {row["setting"] for row in json.loads(meter("config", "show", "--json", "--config", str(config)).out)}
    assert {"proxy.confdir", "proxy.upstream_ca", "budgets.task_usd", "automation.coverage_target"} <= shown
    assert shown - written == set(), "meter config init leaves these out"
    # Besides them, the starter holds only the commented example of a redirect.
    assert {name for name in written - shown if not name.startswith("intercept.redirect.")} == set()


def test_the_starter_settings_uncommented_are_a_valid_config(meter, tmp_path):
    config = tmp_path / "config.toml"
    meter("config", "init", "--config", str(config))
    examples = {"/path/to/folder": str(tmp_path / "ca"), "/path/to/ca.pem": str(tmp_path / "ca.pem")}
    sections: dict[str, list[str]] = {}
    for section, key, value in _starter_settings(config.read_text()).values():
        value = examples.get(value, value) if isinstance(value, str) else value
        sections.setdefault(section, []).append(f"{json.dumps(key)} = {json.dumps(value)}")
    uncommented = tmp_path / "uncommented.toml"
    uncommented.write_text("".join(f"[{section}]\n" + "\n".join(lines) + "\n" for section, lines in sections.items()))
    uncommented.chmod(0o600)
    result = meter("config", "check", str(uncommented))
    assert result.code == 0, result.err
    shown = {row["setting"]: row for row in json.loads(meter("config", "show", "--json", "--config", str(uncommented)).out)}
    assert shown["proxy.confdir"] == {"setting": "proxy.confdir", "value": str(tmp_path / "ca"), "source": str(uncommented)}
    assert shown["proxy.upstream_ca"]["value"] == str(tmp_path / "ca.pem")


def test_show_prints_the_ca_folder_in_use_when_it_is_the_default(meter):
    rows = {row["setting"]: row for row in json.loads(meter("config", "show", "--json").out)}
    assert rows["proxy.confdir"]["source"] == "default"
    assert rows["proxy.confdir"]["value"] == os.path.join(os.environ["XDG_DATA_HOME"], "taskmeter", "mitmproxy")


@pytest.mark.parametrize("how", ["--config", "METER_CONFIG"])
def test_a_named_config_that_does_not_exist_is_refused_alike_everywhere(meter, tmp_path, monkeypatch, how):
    missing = tmp_path / "typo.toml"
    args = ["--config", str(missing)] if how == "--config" else []
    if how == "METER_CONFIG":
        monkeypatch.setenv("METER_CONFIG", str(missing))
    path = meter("config", "path", *args)
    assert (
        path.code == 0 and "does not exist" in path.out and "meter config init" in path.out and "defaults apply" not in path.out
    )
    said = f"config file {missing} does not exist: `meter config init --config {missing}` writes one"
    for command in (["config", "show"], ["config", "check"], ["stop"], ["env"]):
        result = meter(*command, *args)
        assert (result.code, result.err.strip()) == (1, f"meter: error: {said}"), command
    doctor = meter("doctor", *args)
    assert doctor.code == 1 and doctor.out.strip() == f"FAIL  config    {said}"
    assert meter("config", "init", *args).code == 0 and missing.exists()
    assert meter("config", "check", *args).code == 0


def test_the_default_config_may_be_absent(meter):
    path = meter("config", "path")
    assert "defaults apply" in path.out and "meter config init" in path.out
    assert meter("config", "show").code == 0


@pytest.mark.e2e  # starts `meter proxy`
def test_the_proxy_refuses_a_named_config_that_does_not_exist(tmp_path):
    missing = tmp_path / "nope.toml"
    env = {**os.environ, "METER_CONFIG": str(missing), "METER_DB": str(tmp_path / "meter.db")}
    result = subprocess.run(
        [str(VENV_BIN / "meter"), "proxy", "--port", "0"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"meter: error: config file {missing} does not exist: `meter config init --config {missing}` writes one"
    ]
    assert not (tmp_path / "meter.db").exists()
