"""The pytest plugin in a project's virtualenvs (docs/automation.md).

`meter hooks install` installs pytest_plugin/taskmeter_pytest.py into the
repository's virtualenvs as a small distribution, `taskmeter-pytest`, with a
`pytest11` entry point: pytest loads it by itself, whatever PYTHONPATH or
PYTEST_PLUGINS say, and `pip list` / `pip uninstall taskmeter-pytest` see it
like any package. Environment variables could not do this: PYTEST_PLUGINS
naming a module that is not importable makes every pytest exit 4.
"""

import base64
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from taskmeter import __version__
from taskmeter.errors import MeterError

MODULE = "taskmeter_pytest"
PLUGIN_SOURCE = Path(__file__).resolve().parent / "pytest_plugin" / f"{MODULE}.py"
DIST_INFO = f"{MODULE}-{__version__}.dist-info"


class NotAVirtualenv(MeterError):
    pass


def repository_venvs(repo: Path, named: list[Path]) -> list[Path]:
    """The virtualenvs to enrol: those named, the active one ($VIRTUAL_ENV), and
    each folder at the repository's top with a pyvenv.cfg (.venv, venv, ...)."""
    for venv in named:
        if not (venv / "pyvenv.cfg").is_file():
            raise NotAVirtualenv(f"{venv} is not a virtualenv (it has no pyvenv.cfg)")
    found = [*named, *sorted(path.parent for path in repo.glob("*/pyvenv.cfg"))]
    active = Path(os.environ.get("VIRTUAL_ENV") or repo / "-")  # a folder with no pyvenv.cfg: none
    if (active / "pyvenv.cfg").is_file():
        found.append(active)
    return list(dict.fromkeys(venv.resolve() for venv in found))


def site_packages(venv: Path) -> Path:
    """Where the venv's own interpreter installs pure-Python packages."""
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    try:
        answer = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        raise NotAVirtualenv(f"{venv}: its interpreter {python} does not run") from None
    return Path(answer.stdout.strip())


def _record_line(site: Path, path: Path) -> str:
    data = path.read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path.relative_to(site).as_posix()},sha256={digest},{len(data)}"


def install(venv: Path) -> None:
    """Install (or refresh) the plugin as the distribution taskmeter-pytest."""
    site = site_packages(venv)
    try:
        _remove(site)
        _write(site)
    except OSError as exc:
        raise NotAVirtualenv(f"cannot install the pytest plugin in {venv}: {exc.strerror or exc}") from None


def _write(site: Path) -> None:
    module = site / f"{MODULE}.py"
    shutil.copyfile(PLUGIN_SOURCE, module)
    info = site / DIST_INFO
    info.mkdir()
    files = {
        "METADATA": f"Metadata-Version: 2.1\nName: taskmeter-pytest\nVersion: {__version__}\n"
        "Summary: taskmeter's pytest plugin, installed by `meter hooks install`\n",
        "entry_points.txt": f"[pytest11]\n{MODULE} = {MODULE}\n",
        "INSTALLER": "meter\n",
    }
    for name, text in files.items():
        (info / name).write_text(text, encoding="utf-8")
    lines = [_record_line(site, path) for path in (module, *(info / name for name in files))]
    (info / "RECORD").write_text("\n".join([*lines, f"{DIST_INFO}/RECORD,,"]) + "\n", encoding="utf-8")


def uninstall(venv: Path) -> bool:
    """Remove the plugin; False when it was not there."""
    try:
        return _remove(site_packages(venv))
    except OSError as exc:
        raise NotAVirtualenv(f"cannot remove the pytest plugin from {venv}: {exc.strerror or exc}") from None


def installed(venv: Path) -> bool:
    return any(site_packages(venv).glob(f"{MODULE}-*.dist-info"))


def _remove(site: Path) -> bool:
    """Remove every version of the plugin from `site`."""
    found = False
    for info in site.glob(f"{MODULE}-*.dist-info"):
        shutil.rmtree(info)
        found = True
    for path in [site / f"{MODULE}.py", *site.glob(f"__pycache__/{MODULE}.*.pyc")]:
        if path.exists():
            path.unlink()
            found = True
    return found
