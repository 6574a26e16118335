"""Claude Code's side of the self-filling record (docs/automation.md).

`meter claude install` writes to the project's `.claude/settings.local.json`
(never the committed settings.json):
- a SessionStart hook that binds the session to the branch's task (else the
  current one), printing nothing, since a SessionStart hook's output enters
  the model's context; that session's calls then go to that task;
- a UserPromptSubmit hook: a prompt starting with `/hallucination [note]`
  flags the session's last main-conversation call and is blocked, so no model
  call is billed for it;
- the statusLine `meter statusline`, chaining a status line already set.
"""

import json
import shlex
from pathlib import Path

from taskmeter.errors import MeterError
from taskmeter.store import tasks
from taskmeter.store.connection import write_transaction
from taskmeter.timefmt import now_stored

FLAG_COMMAND = "/hallucination"
_OURS = "taskmeter"  # every command we write names the meter: how we find our entries again


def meter_command() -> str:
    """`meter`, or this installation's interpreter (automation/command.py), shell-quoted."""
    from taskmeter.automation.command import meter_words, render

    return render(meter_words())


def installed_command(project: Path) -> list[str] | None:
    """The command our hooks in the project's settings run (None: none of ours)."""
    for entry in _read(settings_path(project)).get("hooks", {}).get("SessionStart", []):
        if _ours(entry):
            words = shlex.split(entry["hooks"][0]["command"], comments=True)
            return words[: words.index("claude")]
    return None


def settings_path(project: Path) -> Path:
    return project / ".claude" / "settings.local.json"


def _read(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        settings = json.loads(path.read_text() or "{}")
    except ValueError as exc:
        raise MeterError(f"{path} is not valid JSON ({exc}); fix or remove it first") from None
    if not isinstance(settings, dict):
        raise MeterError(f"{path} does not hold a JSON object")
    return settings


def _ours(entry: dict) -> bool:
    return any(_OURS in str(hook.get("command", "")) for hook in entry.get("hooks", []))


def install(project: Path) -> Path:
    """Add (or refresh) our hooks and status line; everything else is kept."""
    path = settings_path(project)
    settings = _read(path)
    meter = meter_command()
    hooks = settings.setdefault("hooks", {})
    for event, command in (("SessionStart", "session-start"), ("UserPromptSubmit", "prompt")):
        entries = [entry for entry in hooks.get(event, []) if not _ours(entry)]
        entries.append({"hooks": [{"type": "command", "command": f"{meter} claude hook {command}  # {_OURS}"}]})
        hooks[event] = entries
    theirs = settings.get("statusLine", {}).get("command") if isinstance(settings.get("statusLine"), dict) else None
    if theirs and _OURS in theirs:
        theirs = _chained(theirs)
    status = f"{meter} statusline" + (f" --chain {shlex.quote(theirs)}" if theirs else "") + f"  # {_OURS}"
    settings["statusLine"] = {"type": "command", "command": status}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")
    return path


def _chained(command: str) -> str | None:
    words = shlex.split(command, comments=True)
    return words[words.index("--chain") + 1] if "--chain" in words else None


def uninstall(project: Path) -> Path:
    path = settings_path(project)
    settings = _read(path)
    for event in ("SessionStart", "UserPromptSubmit"):
        entries = [entry for entry in settings.get("hooks", {}).get(event, []) if not _ours(entry)]
        if entries:
            settings["hooks"][event] = entries
        else:
            settings.get("hooks", {}).pop(event, None)
    if not settings.get("hooks"):
        settings.pop("hooks", None)
    status = settings.get("statusLine")
    if isinstance(status, dict) and _OURS in str(status.get("command", "")):
        theirs = _chained(status["command"])
        if theirs:
            settings["statusLine"] = {"type": "command", "command": theirs}
        else:
            settings.pop("statusLine")
    path.write_text(json.dumps(settings, indent=2) + "\n")
    return path


def session_start(db, event: dict, branch_pattern: str) -> str | None:
    """Bind the session to its branch's task (else the current task); prints nothing."""
    from taskmeter.automation.git import task_of_repository

    session = event.get("session_id")
    if not isinstance(session, str) or not session:
        return None
    task_id = task_of_repository(db, Path(event.get("cwd") or "."), branch_pattern)
    if task_id is None:
        return None
    at = now_stored()
    with write_transaction(db):
        task_id = tasks.ensure_task(db, task_id, at)
        tasks.bind_session(db, session, task_id, at)
    return task_id


def prompt_submit(db, event: dict) -> dict | None:
    """`/hallucination [note]`: flag the session's last main-conversation call and
    block the prompt. Anything else: None, and Claude Code goes on."""
    prompt = str(event.get("prompt") or "").strip()
    if prompt.split(maxsplit=1)[:1] != [FLAG_COMMAND]:
        return None
    from taskmeter.store import interactions  # only to flag: `meter doctor` reads the settings without it

    note = prompt[len(FLAG_COMMAND) :].strip() or None
    try:
        interaction_id = interactions.last_call(db, None, client_session=str(event.get("session_id") or "")).interaction_id
    except MeterError as exc:
        return {"decision": "block", "reason": f"meter: nothing flagged: {exc}"}
    interactions.flag(db, interaction_id, note)
    row = interactions.one(db, interaction_id)
    return {
        "decision": "block",
        "reason": f"meter: flagged {interaction_id} ({row['task_id'] or 'unassigned'}, {row['model'] or '?'}) as a hallucination"
        + (f": {note}" if note else ""),
    }
