"""Issue 23, instant commands: the settings files are parsed once, then read from the
user cache folder while neither changes; a change of either, or a cache another account
could have written, is parsed again. In process, with real files."""

import os
import tomllib

import pytest

from taskmeter.config import files
from taskmeter.errors import MeterError


@pytest.fixture
def folders(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("METER_CONFIG", raising=False)
    config = tmp_path / "config.toml"
    config.write_text("[record]\nidle_minutes = 7\n")
    return config


@pytest.fixture
def parses(monkeypatch):
    """How many TOML texts were parsed."""
    counted = []
    real = tomllib.loads

    def counting(text, **options):
        counted.append(text)
        return real(text, **options)

    monkeypatch.setattr(tomllib, "loads", counting)
    return counted


def test_unchanged_files_are_read_from_the_cache(folders, parses):
    first = files.layers(folders)
    assert len(parses) == 2  # the defaults and the user's file
    assert files.layers(folders) == first and len(parses) == 2
    assert files.read_values(folders).get("record.idle_minutes", files.NUMBER) == 7
    assert len(parses) == 2
    assert os.stat(files._cache_file()).st_mode & 0o777 == 0o600


def test_a_changed_file_is_parsed_again(folders, parses):
    files.layers(folders)
    folders.write_text("[record]\nidle_minutes = 9\n")  # the same size: the times and the inode tell
    assert files.read_values(folders).get("record.idle_minutes", files.NUMBER) == 9
    os.replace(_written(folders.with_name("new.toml"), "[record]\nidle_minutes = 11\n"), folders)
    assert files.read_values(folders).get("record.idle_minutes", files.NUMBER) == 11
    assert len(parses) == 6


def test_no_user_file_is_cached_too_and_a_named_file_that_is_gone_is_still_refused(folders, parses):
    assert files.layers(None)[1] == {} and files.layers(None)[1] == {}
    assert len(parses) == 1  # the defaults, once
    files.layers(folders)
    folders.unlink()
    with pytest.raises(MeterError, match="does not exist"):
        files.layers(folders)


def test_a_file_whose_mode_changed_is_read_again(folders, parses):
    """Made unreadable, it says so (`cannot read config`) instead of being answered from the cache:
    a mode change gives a new change time, though its content, size and modification time stay."""
    files.layers(folders)
    folders.chmod(0o400)
    files.layers(folders)
    assert len(parses) == 4


def test_invalid_toml_is_one_error_and_nothing_is_kept(folders, parses):
    folders.write_text("[record\n")
    for _ in range(2):
        with pytest.raises(MeterError, match="is not valid TOML"):
            files.layers(folders)
    assert len(parses) == 4


@pytest.mark.parametrize("spoil", ["others may write it", "not what the meter writes"])
def test_a_cache_others_could_write_or_that_is_not_ours_is_parsed_again(folders, parses, spoil):
    files.layers(folders)
    cache = files._cache_file()
    if spoil == "others may write it":
        cache.chmod(0o666)
    else:
        cache.write_bytes(b"\x00not marshal")
    assert files.read_values(folders).get("record.idle_minutes", files.NUMBER) == 7
    assert len(parses) == 4


def test_a_cache_folder_that_cannot_be_written_only_costs_the_parse(folders, parses, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    for _ in range(2):
        assert files.read_values(folders).get("record.idle_minutes", files.NUMBER) == 7
    assert len(parses) == 4
    assert not list(tmp_path.glob("**/.settings.marshal.*"))  # no temporary file left


def _written(path, text):
    path.write_text(text)
    return path
