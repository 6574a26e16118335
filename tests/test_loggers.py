"""Every module logs under its own name, inside `taskmeter`: the one logger that
logs.configure_logging sends to stderr or hooks.log catches them all."""

import importlib
import logging
import pkgutil

import taskmeter


def test_every_module_logger_is_named_for_its_module_under_taskmeter():
    named = {}
    for module_info in pkgutil.walk_packages(taskmeter.__path__, "taskmeter."):
        if module_info.name.endswith(".__main__"):  # importing it runs the command
            continue
        module = importlib.import_module(module_info.name)
        log = getattr(module, "log", None)
        if isinstance(log, logging.Logger):
            named[module.__name__] = log.name
    assert {"taskmeter.proxy.addons", "taskmeter.recorder.loop", "taskmeter.handover.pipe"} <= named.keys()
    assert all(name == module for module, name in named.items()), named
