"""taskmeter's folders are where platformdirs puts them, though read commands and the
status line find them without importing it (taskmeter/userdirs.py)."""

import platformdirs
import pytest

from taskmeter.userdirs import user_path

ENVIRONMENTS = [
    {},  # no XDG variable: under $HOME
    {"XDG_CONFIG_HOME": "/x/conf", "XDG_DATA_HOME": "/x/data/", "XDG_STATE_HOME": "/x//state"},
    {"XDG_CONFIG_HOME": "", "XDG_DATA_HOME": "   ", "XDG_STATE_HOME": "relative/state"},  # not absolute: ignored
    {"HOME": "/home/someone/"},
    {"HOME": ""},  # not absolute: the password database's home
    {"HOME": "relative", "XDG_DATA_HOME": "/x/data"},
]


@pytest.mark.parametrize("environment", ENVIRONMENTS)
@pytest.mark.parametrize("kind", ["config", "data", "state"])
def test_each_folder_is_the_one_platformdirs_names(monkeypatch, environment, kind):
    for variable in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    assert user_path(kind) == getattr(platformdirs, f"user_{kind}_path")("taskmeter")
