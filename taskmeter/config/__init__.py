"""Settings: shipped defaults, overridden by the user's config file."""

from taskmeter.config.settings import Settings, config_path, load_settings

__all__ = ["Settings", "config_path", "load_settings"]
