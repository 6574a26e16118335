"""`meter config path|show|check|init`: where the settings live, what they are
and where each came from, and a file validated without starting anything."""

import json
import tomllib


def test_init_writes_a_commented_starter_that_changes_nothing_until_edited(meter, tmp_path):
    config = tmp_path / "conf" / "config.toml"
    assert "does not exist" in meter("config", "path", "--config", str(config)).out
    assert meter("config", "init", "--config", str(config)).code == 0
    text = config.read_text()
    assert "# port = 8877" in text and "# [upstreams]" in text
    assert tomllib.loads(text) == {}  # every setting commented out
    assert meter("config", "check", "--config", str(config)).out.strip().endswith("valid")
    again = meter("config", "init", "--config", str(config))
    assert again.code == 1 and "exists" in again.err and "--force" in again.err
    assert meter("config", "init", "--force", "--config", str(config)).code == 0


def test_show_names_the_source_of_every_setting(meter, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[proxy]\nport = 9000\n[upstreams]\nlocal = "http://127.0.0.1:8000"\n')
    rows = {row["setting"]: row for row in json.loads(meter("config", "show", "--json", "--config", str(config)).out)}
    assert rows["proxy.port"] == {"setting": "proxy.port", "value": 9000, "source": str(config)}
    assert rows["upstreams.local"]["source"] == str(config)
    assert rows["proxy.listen_host"] == {"setting": "proxy.listen_host", "value": "127.0.0.1", "source": "default"}
    assert rows["upstreams.openai"]["source"] == "default"
    assert rows["proxy.shutdown_grace_seconds"]["value"] == 10


def test_check_finds_a_bad_file_in_one_line(meter, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[proxy]\nport = "eighty"\n')
    result = meter("config", "check", str(bad))
    assert result.code == 1 and result.err.count("\n") == 1 and "proxy.port" in result.err
    missing = meter("config", "check", str(tmp_path / "nope.toml"))
    assert missing.code == 1 and "does not exist" in missing.err
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[proxy]\nsore_bodies = true\n")  # a typo is an error, not ignored
    assert meter("config", "check", str(unknown)).code == 1
