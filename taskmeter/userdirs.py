"""taskmeter's per-user folders, as platformdirs names them. On Linux the usual
cases (an absolute $XDG_..._HOME, else an absolute $HOME) are answered here:
importing platformdirs loads tempfile, random and shutil, several milliseconds
of every read command and of the status line. Every other case is platformdirs'."""

import os
import sys
from pathlib import Path

APP = "taskmeter"
# Each kind's XDG variable and its folder under the home folder (the XDG base directory rules).
_XDG = {
    "config": ("XDG_CONFIG_HOME", ".config"),
    "data": ("XDG_DATA_HOME", ".local/share"),
    "state": ("XDG_STATE_HOME", ".local/state"),
    "cache": ("XDG_CACHE_HOME", ".cache"),
}


def user_path(kind: str) -> Path:
    """The folder of `kind` (config, data, state or cache) for taskmeter."""
    variable, under_home = _XDG[kind]
    if sys.platform == "linux" and not hasattr(sys, "getandroidapilevel"):
        chosen, home = os.environ.get(variable, ""), os.environ.get("HOME", "")
        if os.path.isabs(chosen):
            return Path(chosen) / APP
        if os.path.isabs(home):
            return Path(home) / under_home / APP
    import platformdirs

    return getattr(platformdirs, f"user_{kind}_path")(APP)
