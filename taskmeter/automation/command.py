"""The command git hooks, the pytest plugin and Claude Code's hooks run to reach the meter.

It is `meter` when the `meter` on the PATH is this installation's (a pipx or uv tool,
or a clone's .venv/bin on the PATH): reinstalling or upgrading the tool then keeps
them working. Otherwise it is this installation's interpreter, by its absolute path.
Either can break (the clone moved, the tool uninstalled): `broken` says so, and the
status commands and `meter doctor` print it with the command that repairs it."""

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

METER = "meter"


def meter_words() -> list[str]:
    """The words that run this installation's `meter` from a hook."""
    found = shutil.which(METER)
    interpreter = _interpreter(Path(found)) if found else None
    if interpreter and interpreter.parent.resolve() == Path(sys.executable).parent.resolve():
        return [METER]
    return [sys.executable, "-m", "taskmeter"]


def _interpreter(script: Path) -> Path | None:
    """The interpreter a console script runs: its shebang's (pip writes `#!/bin/sh`
    and an `exec` line when the path is long)."""
    try:
        with script.open("rb") as file:
            head = file.read(1024).decode(errors="replace").splitlines()
    except OSError:
        return None
    if not head or not head[0].startswith("#!"):
        return None
    words = shlex.split(head[0][2:])
    if words and words[0] == "/bin/sh" and len(head) > 1 and head[1].startswith("'''exec' "):
        words = shlex.split(head[1].removeprefix("'''exec' "))
    return Path(words[0]) if words else None


def render(words: list[str]) -> str:
    return " ".join(shlex.quote(word) for word in words)


def broken(words: list[str]) -> str | None:
    """Why `words` can no longer run the meter, or None: its interpreter is gone, or
    cannot import taskmeter (checked by running it, as the hook would)."""
    if len(words) == 1:  # a console script: `meter` on the PATH, or by its path (Claude settings of earlier versions)
        found = shutil.which(METER) if words == [METER] else words[0]
        if found is None or not Path(found).exists():
            return "`meter` is no longer on the PATH" if words == [METER] else f"{found} no longer exists"
        python = _interpreter(Path(found))
        if python is None or not python.exists():
            return f"the interpreter of {found} ({python}) no longer exists"
        interpreter = str(python)
    else:
        interpreter = words[0]
        if not Path(interpreter).exists():
            return f"its interpreter {interpreter} no longer exists"
    try:
        # From the root folder: a checkout of taskmeter in the current folder would be importable too.
        imported = subprocess.run([interpreter, "-c", "import taskmeter"], capture_output=True, timeout=30, cwd="/")
    except OSError as exc:
        return f"its interpreter {interpreter} does not run: {exc.strerror or exc}"
    if imported.returncode != 0:
        return f"its interpreter {interpreter} cannot import taskmeter"
    return None


def repair_hooks(repo: Path, db: str | None) -> str:
    """The command that rewrites a repository's broken hooks with a working meter."""
    return render([METER, "hooks", "install", "--repo", str(repo), *(["--db", db] if db else [])])


def repair_claude(project: Path) -> str:
    return render([METER, "claude", "install", "--project", str(project)])
