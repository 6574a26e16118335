"""`meter ui` keeps its compiled templates in the user's cache folder (CompiledTemplates),
so that a dashboard starts and serves its first pages without compiling them again; a
cache file another account could have written is never loaded, and a cache folder
that cannot be written costs the compile, never a page."""

import stat
from pathlib import Path

import jinja2
import pytest

from taskmeter.dashboard import app

TEMPLATES = sorted(path.name for path in Path(str(app.PACKAGE / "templates")).glob("*.html"))


@pytest.fixture
def cache_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "taskmeter" / "templates"


@pytest.fixture
def compiled(monkeypatch) -> list[str]:
    """The names of the templates jinja2 compiles from now on."""
    names: list[str] = []
    compile_source = jinja2.Environment.compile

    def counted(self, source, name=None, filename=None, raw=False, defer_init=False):
        names.append(name)
        return compile_source(self, source, name, filename, raw, defer_init)

    monkeypatch.setattr(jinja2.Environment, "compile", counted)
    return names


def _load_all() -> str:
    """Every template, loaded as a new dashboard loads them; the error page rendered, to compare."""
    env = app._templates().env
    for name in TEMPLATES:
        env.get_template(name)
    return env.get_template("error.html").render(message="a one-line refusal", navigation=[])


def test_a_second_dashboard_loads_every_template_compiled_by_the_first(cache_home, compiled):
    first = _load_all()
    assert sorted(compiled) == TEMPLATES
    assert stat.S_IMODE(cache_home.stat().st_mode) == 0o700
    files = list(cache_home.iterdir())
    assert len(files) == len(TEMPLATES) and all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in files)
    compiled.clear()
    assert _load_all() == first
    assert compiled == []


def test_a_cache_file_others_could_have_written_is_compiled_again(cache_home, compiled):
    _load_all()
    for path in cache_home.iterdir():
        path.chmod(0o622)
    compiled.clear()
    _load_all()
    assert sorted(compiled) == TEMPLATES


def test_an_unwritable_cache_folder_costs_the_compile_not_the_page(cache_home, compiled):
    cache_home.parent.mkdir(parents=True)
    cache_home.write_text("a file where the folder should be")
    assert "a one-line refusal" in _load_all()
    compiled.clear()
    _load_all()
    assert sorted(compiled) == TEMPLATES
