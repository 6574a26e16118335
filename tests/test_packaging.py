"""The source distribution carries the tests, the bench and the package data,
and pyproject.toml's dependency groups point at the one list of each set of
tools: a real sdist built by setuptools from a copy of the working tree."""

import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# What a working tree has that is none of the project's.
NOT_OURS = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", "build", "dist", "*.egg-info")


@pytest.mark.e2e  # builds the sdist in a Python subprocess
def test_the_sdist_carries_the_tests_the_bench_and_the_package_data(tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(ROOT, tree, ignore=NOT_OURS)  # built from a copy: the build writes an egg-info beside the sources
    build = subprocess.run(
        [sys.executable, "-c", f"from setuptools import build_meta; print(build_meta.build_sdist({str(tmp_path)!r}))"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stderr
    with tarfile.open(tmp_path / build.stdout.split()[-1]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    ours = {
        str(path.relative_to(ROOT))
        for folder in ("tests", "bench", "docs", "scripts")
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and "results" not in path.relative_to(ROOT).parts[:2]
    }
    missing = ours - names
    assert not missing, f"the sdist lacks {sorted(missing)[:5]}"
    assert {"tests/recorded/index.json", "tests/conftest.py", "bench/__main__.py", "Makefile", "requirements-test.lock"} <= names
    package_data = {
        f"{package.replace('.', '/')}/{path.relative_to(ROOT / package.replace('.', '/'))}"
        for package, patterns in PYPROJECT["tool"]["setuptools"]["package-data"].items()
        for pattern in patterns
        for path in (ROOT / package.replace(".", "/")).glob(pattern)
    }
    assert package_data and package_data <= names
    assert {"taskmeter/recorder/bpe/o200k_base.tiktoken.gz", "taskmeter/config/defaults.toml"} <= package_data
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement).group().lower().replace("_", "-")


def _group(name: str) -> list[str]:
    """A PEP 735 group with its included groups expanded."""
    requirements = []
    for item in PYPROJECT["dependency-groups"][name]:
        requirements += _group(item["include-group"]) if isinstance(item, dict) else [item]
    return requirements


def test_dependency_groups_name_the_test_extra_and_list_nothing_twice():
    assert _group("test") == _group("bench") == ["taskmeter[test]"]
    extras = PYPROJECT["project"]["optional-dependencies"]
    listed = [_name(requirement) for requirements in extras.values() for requirement in requirements]
    listed += [_name(item) for group in PYPROJECT["dependency-groups"] for item in _group(group) if _name(item) != "taskmeter"]
    assert len(listed) == len(set(listed)), "a package is listed twice: keep one list (the extras, see pyproject.toml)"
