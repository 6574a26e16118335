"""Settings: shipped defaults, overridden by the user's config file.

`files` reads them as plain values (the commands that only read, without pydantic);
`automation` the [automation] ones the hooks read, by the rules `settings` applies;
`settings` validates them whole. Settings and load_settings are imported from it on
first use, so that importing `taskmeter.config.files` never loads pydantic.
"""

from taskmeter.config.files import config_path

__all__ = ["Settings", "config_path", "load_settings"]


def __getattr__(name: str):
    if name in ("Settings", "load_settings"):
        from taskmeter.config import settings

        return getattr(settings, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
