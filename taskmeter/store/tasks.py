"""Tasks, phases, the current task, milestones and iterations."""

import re
import sqlite3
from datetime import datetime, timedelta
from typing import NamedTuple

from taskmeter.errors import MeterError, NotFound
from taskmeter.store.connection import require_transaction, write_transaction
from taskmeter.timefmt import display, now, now_stored, parse_duration, to_stored

# Patterns as text, compiled by `re` (and cached) when first used: not at import, by every command.
_TASK_ID = r"^[A-Za-z0-9][A-Za-z0-9._]*(?:-[A-Za-z0-9._]+)+$"
_PHASE_ID = r"^[A-Za-z0-9][A-Za-z0-9._]*$"

# The seed's Level 1 milestones, in the order they must happen.
MILESTONES = {
    "begin": "begin_at",
    "initial": "initial_completion_at",
    "tests": "tests_completion_at",
    "validated": "validation_at",
    "approved": "final_approval_at",
}
# A clock a little ahead is not "the future".
FUTURE_TOLERANCE = timedelta(minutes=1)
PHASE_MILESTONES = {
    "begin": "begin_at",
    "first-code": "first_code_at",
    "tests-passing": "tests_passing_at",
    "integration": "integration_complete_at",
    "docs": "documentation_complete_at",
    "approved": "final_approval_at",
}

SUCCESS_VALUES = ("pass", "pending", "fail")


class Field(NamedTuple):
    """A field a person records (everything else is measured), as every part spells it:
    `meter task`/`meter phase` take it as --option, the store keeps it in `column`,
    reports name it `seed` (the seed's field in snake_case; upper case in the execution
    log and in the option's help, before `about`). `kind` says how it is typed, parsed
    and said: text, duration (seconds), percent (0-100), yes-no (stored 1/0), success,
    tag (one word, lower case)."""

    option: str
    column: str
    seed: str
    kind: str
    about: str


# Level 1 inputs, in the seed's order; `meter task` takes an option for each.
TASK_FIELDS = (
    Field("title", "title", "title", "text", "a short title for the task."),
    Field("estimate", "estimate_seconds", "estimated_duration", "duration", "how long it should take, e.g. 1h30m, 90m, 1.5h."),
    Field("projected", "projected_outcome", "projected_outcome", "text", "the expected deliverable."),
    Field("actual", "actual_outcome", "actual_outcome", "text", "what was delivered."),
    Field(
        "projection-met",
        "projection_met",
        "projection_met",
        "yes-no",
        "did the projected outcome materialise? (its phase's THEORY_ACCURACY counts these)",
    ),
    Field("success", "success", "success_criteria", "success", "pass, pending or fail."),
    Field("coverage-target", "coverage_target", "test_coverage_target", "percent", "the test coverage aimed at, in %."),
    Field("coverage-actual", "coverage_actual", "test_coverage_actual", "percent", "the test coverage reached, in %."),
    Field(
        "perf-target",
        "performance_target",
        "performance_target",
        "text",
        "the performance it must reach, e.g. '<50ms pattern match'.",
    ),
    Field("perf-actual", "performance_actual", "performance_actual", "text", "the performance it reached, e.g. '47.2ms'."),
    Field("perf-met", "performance_met", "performance_met", "yes-no", "was the performance target met?"),
    Field("docs", "doc_completeness", "doc_completeness", "percent", "how much of it is documented, in %."),
    Field("blockers", "blockers", "blockers_encountered", "text", "what stood in the way."),
    Field("lessons", "lessons", "lessons_learned", "text", "what to do the same or differently next time."),
    Field("tag", "tag", "tag", "tag", "a word such as api: tasks with the same tag forecast each other (docs/forecasts.md)."),
)
# Level 2 inputs and the meta-learning fields; `meter phase` takes an option for each.
PHASE_FIELDS = (
    Field("title", "title", "title", "text", "a short title for the phase."),
    Field("deliverables", "projected_deliverables", "projected_deliverables", "text", "what the phase is to deliver."),
    Field("completed", "deliverables_completed", "deliverables_completed", "text", "what it delivered."),
    Field("blockers", "critical_blockers", "critical_blockers", "text", "what stood in its way."),
    Field("patterns", "patterns_extracted", "patterns_extracted", "text", "patterns worth reusing."),
    Field("debt", "technical_debt", "technical_debt_incurred", "text", "shortcuts to pay back later."),
    Field("surprise", "biggest_surprise", "biggest_surprise", "text", "what nobody expected."),
    Field("win", "biggest_win", "biggest_win", "text", "what went best."),
    Field("challenge", "biggest_challenge", "biggest_challenge", "text", "what was hardest."),
    Field("improvements", "theory_improvements", "theory_improvements", "text", "what to change in how work is planned."),
)
TASK_INPUTS = tuple(field.column for field in TASK_FIELDS)
PHASE_INPUTS = tuple(field.column for field in PHASE_FIELDS)


def parse_percent(text: str) -> float:
    """A percentage as a person types it: `87` or `87%`, from 0 to 100."""
    try:
        number = float(text.strip().removesuffix("%"))
    except ValueError:
        raise MeterError(f"{text!r} is not a percentage such as 87 or 87%") from None
    if not 0 <= number <= 100:
        raise MeterError(f"{text!r} is outside 0-100%")
    return number


_TAG = r"^[a-z0-9][a-z0-9._-]{0,39}$"


def parse_tag(text: str) -> str:
    """A tag as stored: one word of letters, digits, dots, dashes and underscores, in lower case."""
    tag = text.strip().lower()
    if not re.match(_TAG, tag):
        raise MeterError(f"malformed tag {text!r}: use one word of letters, digits, '.', '-' or '_', such as api")
    return tag


def parse_input(field: Field, text: str) -> str | int | float:
    """The value of `field` typed as text, as the column stores it (yes-no as 1/0):
    the one reading of each kind for `meter task`/`meter phase` and the dashboard's forms."""
    if field.kind == "duration":
        return parse_duration(text)
    if field.kind == "percent":
        return parse_percent(text)
    if field.kind == "yes-no":
        if text.strip().lower() not in ("yes", "no"):
            raise MeterError(f"{field.option} must be yes or no, not {text!r}")
        return int(text.strip().lower() == "yes")
    if field.kind == "tag":
        return parse_tag(text)
    if field.kind == "success" and text not in SUCCESS_VALUES:
        raise MeterError(f"{field.option} must be one of {', '.join(SUCCESS_VALUES)}, not {text!r}")
    return text


def validate_task_id(text: str) -> str:
    """The canonical (upper-case) spelling of a task ID: IDs are case-insensitive."""
    task_id = text.strip().upper()
    if not re.match(_TASK_ID, task_id) or len(task_id) > 64:
        raise MeterError(f"malformed task ID {text!r}: use a phase, a dash and a number or name, such as P1-010")
    return task_id


def validate_phase_id(text: str) -> str:
    """The canonical (upper-case) spelling of a phase ID."""
    phase_id = text.strip().upper()
    if not re.match(_PHASE_ID, phase_id) or len(phase_id) > 32:
        raise MeterError(f"malformed phase ID {text!r}: use letters, digits and dots, such as P1")
    return phase_id


def infer_phase(task_id: str) -> str:
    """`P1-010` belongs to phase `P1`; `P3.5-002` to `P3.5`."""
    return task_id.split("-", 1)[0]


def _ensure_phase(db: sqlite3.Connection, phase_id: str, at: str) -> None:
    db.execute(
        "INSERT INTO phases (id, created_at) VALUES (?, ?) ON CONFLICT(id) DO NOTHING",
        (phase_id, at),
    )


def get_task(db: sqlite3.Connection, task_id: str) -> sqlite3.Row:
    row = db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
    if row is None:
        raise NotFound(f"unknown task {task_id!r}: create it with `meter set-task {task_id}`")
    return row


def get_phase(db: sqlite3.Connection, phase_id: str) -> sqlite3.Row:
    row = db.execute("SELECT * FROM phases WHERE id = ?", (phase_id,)).fetchone()
    if row is None:
        raise NotFound(f"unknown phase {phase_id!r}: phases are created by `meter set-task`")
    return row


class NeedsCreate(MeterError):
    """A new task ID that looks like a typo: it is made only when asked (--create)."""


# A name and its number: `P` and `3` of phase P3 (`3.5` of P3.5), `0` and `010` of task P1-010.
_NUMBERED = r"^(.*?)(\d+(?:\.\d+)*)$"


def _one_edit_apart(a: str, b: str) -> bool:
    """One character added, dropped or replaced, or two neighbours swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        differ = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        swapped = len(differ) == 2 and differ[1] == differ[0] + 1 and (a[differ[0]], a[differ[1]]) == (b[differ[1]], b[differ[0]])
        return len(differ) == 1 or swapped
    short, long = sorted((a, b), key=len)
    first = next((i for i, (x, y) in enumerate(zip(short, long, strict=False)) if x != y), len(short))
    return short[first:] == long[first + 1 :]


def _numbered(identifier: str) -> tuple[str, str] | None:
    match = re.match(_NUMBERED, identifier)
    return (match.group(1), match.group(2)) if match else None


def _follows_task_naming(task_id: str, phase_id: str, siblings: list[str]) -> bool:
    """Is `task_id` the next of its phase's numbering: the same name before the
    number, and a number above every sibling's (P1-011 after P1-010)? A leading
    zero fixes the width: P1-0100 does not follow P1-010."""

    def numbered_suffix(identifier: str) -> tuple[str, str] | None:
        prefix = phase_id + "-"
        numbered = _numbered(identifier[len(prefix) :]) if identifier.startswith(prefix) else None
        return numbered if numbered and numbered[1].isdigit() else None

    own = numbered_suffix(task_id)
    if own is None:
        return False
    numbers = [
        int(numbered[1])
        for sibling in siblings
        if (numbered := numbered_suffix(sibling))
        and numbered[0] == own[0]
        and (len(numbered[1]) == len(own[1]) or not own[1].startswith("0"))
    ]
    return bool(numbers) and int(own[1]) > max(numbers)


def creation_refusal(db: sqlite3.Connection, task_id: str, phase_id: str | None = None, as_of: str | None = None) -> str | None:
    """Why a new task `task_id` (in `phase_id`, default its ID's) must not be made
    without --create, or None: the one rule for every way a task is named (set-task,
    run --task, branch checkouts). A new ID needs --create when it is within one edit
    of an existing ID, or when its phase is new and does not follow the database's
    phase naming (LOGIN when the phases are P1 and P2). The first task of an empty
    database, a new phase in the same naming (P3 after P2), and the next task of a
    phase's numbering (P1-011 after P1-010) never need it. `as_of` (a stored moment)
    judges by the tasks and phases made before it: an event handed over in the
    background (a commit's hook) is judged as when it happened, not by tasks that
    later events made first."""
    task_id = validate_task_id(task_id)
    phase_id = validate_phase_id(phase_id) if phase_id else infer_phase(task_id)
    made, before = _made_before(as_of)
    existing = [row["id"].upper() for row in db.execute(f"SELECT id FROM tasks WHERE {made}", before)]
    if not existing or task_id in existing:
        return None
    phases = [row["id"].upper() for row in db.execute(f"SELECT id FROM phases WHERE {made}", before)]
    if phase_id not in phases:
        off_naming = new_phase_refusal(db, phase_id, as_of)
        return f"{task_id} would start {off_naming}" if off_naming else None
    siblings = [
        row["id"].upper() for row in db.execute(f"SELECT id FROM tasks WHERE phase_id = ? AND {made}", (phase_id, *before))
    ]
    if _follows_task_naming(task_id, phase_id, siblings):
        return None
    resembles = sorted((other for other in existing if _one_edit_apart(task_id, other)), key=natural_key)
    if resembles:
        return f"{task_id} is a new task ID within one edit of {', '.join(resembles)}"
    return None


def _made_before(as_of: str | None) -> tuple[str, tuple[str, ...]]:
    """The WHERE clause and parameters of the tasks or phases made before `as_of` (all when None)."""
    return ("created_at < ?", (as_of,)) if as_of else ("1", ())


def new_phase_refusal(db: sqlite3.Connection, phase_id: str, as_of: str | None = None) -> str | None:
    """Why a new phase `phase_id` must not be made without --create, or None: it
    does not follow the database's phase naming (LOGIN when the phases are P1 and
    P2). A database with no phase, and an existing phase, never need it. `as_of`:
    as creation_refusal's."""
    made, before = _made_before(as_of)
    phases = [row["id"].upper() for row in db.execute(f"SELECT id FROM phases WHERE {made}", before)]
    if not phases or phase_id in phases:
        return None
    names = {numbered[0] for phase in phases if (numbered := _numbered(phase))}
    numbered = _numbered(phase_id)
    if numbered is None or numbered[0] not in names:
        return (
            f"phase {phase_id}, which does not follow this database's phase naming ({', '.join(sorted(phases, key=natural_key))})"
        )
    return None


def _refuse_new_phase(db: sqlite3.Connection, task_id: str, phase_id: str, create: bool) -> None:
    off_naming = None if create else new_phase_refusal(db, phase_id)
    if off_naming:
        raise NeedsCreate(
            f"{task_id} would move to a new {off_naming}: check the ID (`meter phases`), or give --create if it is meant"
        )


def refuse_typo(db: sqlite3.Connection, task_id: str, phase_id: str | None = None) -> None:
    """Raise NeedsCreate when `task_id` may be made only with --create."""
    refusal = creation_refusal(db, task_id, phase_id)
    if refusal:
        raise NeedsCreate(f"{refusal}: check the ID (`meter tasks`), or give --create if it is meant")


class CurrentTask(NamedTuple):
    task_id: str
    since: str


def current_task(db: sqlite3.Connection) -> CurrentTask | None:
    rows = dict(db.execute("SELECT key, value FROM state WHERE key IN ('current_task', 'current_since')"))
    if not rows.get("current_task"):
        return None
    return CurrentTask(rows["current_task"], rows["current_since"])


def _set_current(db: sqlite3.Connection, task_id: str | None, at: str) -> None:
    db.executemany(
        "INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [("current_task", task_id), ("current_since", at)],
    )


class SetTaskResult(NamedTuple):
    task_id: str
    created: bool
    began: bool
    previous: str | None
    unchanged: bool


def set_task(
    db: sqlite3.Connection,
    task_id: str,
    *,
    title: str | None = None,
    estimate_seconds: int | None = None,
    phase_id: str | None = None,
    create: bool = False,
) -> SetTaskResult:
    """Make `task_id` current, creating it (and its phase) on first use; a new ID
    that looks like a typo (creation_refusal) is made only with `create`."""
    task_id = validate_task_id(task_id)
    phase_id = validate_phase_id(phase_id) if phase_id else infer_phase(task_id)
    at = to_stored(now())
    with write_transaction(db):
        existing = db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        created = existing is None
        if created:
            if not create:
                refuse_typo(db, task_id, phase_id)
            _ensure_phase(db, phase_id, at)
            db.execute(
                "INSERT INTO tasks (id, phase_id, title, estimate_seconds, created_at) VALUES (?, ?, ?, ?, ?)",
                (task_id, phase_id, title, estimate_seconds, at),
            )
        else:
            task_id = existing["id"]
            updates = {"title": title, "estimate_seconds": estimate_seconds}
            if phase_id != existing["phase_id"] and phase_id != infer_phase(task_id):
                _refuse_new_phase(db, task_id, phase_id, create)
                _ensure_phase(db, phase_id, at)
                updates["phase_id"] = phase_id
            _update(db, "tasks", task_id, {k: v for k, v in updates.items() if v is not None})
        began = created or existing["begin_at"] is None
        if began:
            db.execute("UPDATE tasks SET begin_at = ? WHERE id = ?", (at, task_id))
        current = current_task(db)
        previous = current.task_id if current else None
        unchanged = previous == task_id
        if not unchanged:
            _set_current(db, task_id, at)
            db.execute(
                "INSERT INTO task_events (task_id, kind, at, previous_task_id) VALUES (?, 'switch', ?, ?)",
                (task_id, at, previous),
            )
    return SetTaskResult(task_id, created, began, previous, unchanged)


def clear_task(db: sqlite3.Connection) -> str | None:
    """No task is current any more; returns the task that was."""
    at = to_stored(now())
    with write_transaction(db):
        current = current_task(db)
        if current is None:
            return None
        _set_current(db, None, at)
        db.execute(
            "INSERT INTO task_events (task_id, kind, at, previous_task_id) VALUES (NULL, 'switch', ?, ?)",
            (at, current.task_id),
        )
    return current.task_id


def resolve_task(db: sqlite3.Connection, task_id: str | None) -> sqlite3.Row:
    """The named task, or the current one when none is named."""
    if task_id:
        return get_task(db, task_id.strip())
    current = current_task(db)
    if current is None:
        raise MeterError("no current task: name one, or set it with `meter set-task ID`")
    return get_task(db, current.task_id)


def _update(db: sqlite3.Connection, table: str, key: str, values: dict) -> None:
    if not values:
        return
    assignments = ", ".join(f"{column} = ?" for column in values)
    db.execute(f"UPDATE {table} SET {assignments} WHERE id = ?", (*values.values(), key))


def update_task(db: sqlite3.Connection, task_id: str, values: dict, phase_id: str | None = None, create: bool = False) -> None:
    """Edit a task's inputs; moving it to a new phase off the naming (new_phase_refusal) needs `create`."""
    unknown = set(values) - set(TASK_INPUTS)
    if unknown:
        raise MeterError(f"not a task field: {', '.join(sorted(unknown))}")
    if values.get("success") not in (None, *SUCCESS_VALUES):
        raise MeterError(f"success must be one of {', '.join(SUCCESS_VALUES)}")
    with write_transaction(db):
        task = get_task(db, task_id)
        if phase_id:
            phase_id = validate_phase_id(phase_id)
            _refuse_new_phase(db, task["id"], phase_id, create)
            _ensure_phase(db, phase_id, to_stored(now()))
            values = {**values, "phase_id": phase_id}
        _update(db, "tasks", task["id"], values)


def estimate_histories(db: sqlite3.Connection, task_ids: list[str]) -> dict[str, list[tuple[str, int | None]]]:
    """Per task, its estimates as (set at, seconds) in the order they were set; None: unset.
    Triggers keep them, whatever writes `tasks.estimate_seconds` (m018)."""
    history: dict[str, list[tuple[str, int | None]]] = {task_id: [] for task_id in task_ids}
    placeholders = ", ".join("?" for _ in task_ids)
    for row in db.execute(
        f"SELECT task_id, set_at, estimate_seconds FROM task_estimates WHERE task_id IN ({placeholders}) ORDER BY id", task_ids
    ):
        history[row["task_id"]].append((row["set_at"], row["estimate_seconds"]))
    return history


def approval_histories(db: sqlite3.Connection, task_ids: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Per task, the approvals withdrawn by `meter task ID --reopen`: (approved at, reopened at)."""
    history: dict[str, list[tuple[str, str]]] = {task_id: [] for task_id in task_ids}
    placeholders = ", ".join("?" for _ in task_ids)
    for row in db.execute(
        f"SELECT task_id, approved_at, reopened_at FROM task_approvals WHERE task_id IN ({placeholders}) ORDER BY id", task_ids
    ):
        history[row["task_id"]].append((row["approved_at"], row["reopened_at"]))
    return history


def update_phase(db: sqlite3.Connection, phase_id: str, values: dict) -> None:
    unknown = set(values) - set(PHASE_INPUTS)
    if unknown:
        raise MeterError(f"not a phase field: {', '.join(sorted(unknown))}")
    with write_transaction(db):
        phase = get_phase(db, phase_id)
        _update(db, "phases", phase["id"], values)


def _check_order(values: dict[str, str | None], milestone: str, at: str, what: str) -> None:
    """`values`: every milestone (in order) of the record as its report shows it."""
    names = list(values)
    position = names.index(milestone)
    if values[milestone] is not None:
        raise MeterError(f"{what} already has {milestone} at {display(values[milestone])}; use --force to replace it")
    for earlier in names[:position]:
        value = values[earlier]
        if value is None:
            raise MeterError(f"milestone out of order: {what} has no {earlier} yet; record it first or use --force")
        if value > at:
            raise MeterError(
                f"milestone out of order: {milestone} at {display(at)} is before {earlier} "
                f"at {display(value)}; use --force to record it anyway"
            )
    for later in names[position + 1 :]:
        value = values[later]
        if value is not None and value < at:
            raise MeterError(
                f"milestone out of order: {what} already has {later} at {display(value)}, "
                f"before {display(at)}; use --force to record it anyway"
            )


def _milestone_stamp(order: dict[str, str], milestone: str, at: datetime | None, what: str) -> str:
    if milestone not in order:
        raise MeterError(f"unknown {what} milestone {milestone!r}: use one of {', '.join(order)}")
    return to_stored(at or now())


def _check_milestone(values: dict[str, str | None], milestone: str, stamp: str, force: bool, what: str) -> None:
    """Nothing happens before the record began, forced or not; a time in the future
    (beyond clock skew) needs force, and so does one out of order."""
    begin = values["begin"]
    if begin is not None and stamp < begin and milestone != "begin":
        raise MeterError(f"{milestone} at {display(stamp)} is before {what} began ({display(begin)}): not recorded")
    if not force and stamp > to_stored(now() + FUTURE_TOLERANCE):
        raise MeterError(f"{milestone} at {display(stamp)} is in the future; use --force if that is meant")
    if not force:
        _check_order(values, milestone, stamp, what)


def _person_mark(
    shown: dict[str, str | None], milestone: str, stamp: str, at: datetime | None, force: bool, source: str | None, what: str
) -> tuple[str, str | None]:
    """The one rule of a person's mark, given the milestones as the report shows them
    and `source`, where the meter got the one marked (None: a person's, or unset).
    Without `at` it confirms the meter's time; otherwise the person's time replaces
    the meter's, checked for order. Returns (the time to store, the source confirmed)."""
    meter_stamp = shown[milestone]
    if source and meter_stamp is not None and at is None:  # a source always comes with its time
        return meter_stamp, source
    _check_milestone({**shown, milestone: None} if source else shown, milestone, stamp, force, what)
    return stamp, None


class Marked(NamedTuple):
    task_id: str
    stamp: str
    released: bool  # the approved task was current, and is no more
    now_current: str | None  # the task current after a release (None: none)
    confirmed: str | None = None  # the meter's source a person confirmed, or None for a time they gave


# The note of a milestone event the meter recorded by itself: "automatic: <source>".
AUTOMATIC_NOTE = "automatic: "


def meter_set(db: sqlite3.Connection, task_ids: list[str], milestone: str) -> dict[str, str]:
    """Per task whose `milestone` the meter set and no person has marked since (its
    latest event of that milestone is the meter's): the meter's source."""
    if not task_ids:
        return {}
    placeholders = ", ".join("?" for _ in task_ids)
    rows = db.execute(
        "SELECT task_id, note FROM task_events WHERE id IN (SELECT max(id) FROM task_events"
        f" WHERE kind = 'milestone' AND milestone = ? AND task_id IN ({placeholders}) GROUP BY task_id)",
        [milestone, *task_ids],
    )
    return {
        row["task_id"]: row["note"].removeprefix(AUTOMATIC_NOTE)
        for row in rows
        if row["note"] and row["note"].startswith(AUTOMATIC_NOTE)
    }


def mark(
    db: sqlite3.Connection,
    task_id: str | None,
    milestone: str,
    *,
    at: datetime | None = None,
    force: bool = False,
    note: str | None = None,
    next_task: str | None = None,
) -> Marked:
    """Record a Level 1 milestone timestamp. Marking one the meter set (a commit, a
    test run), without `at`, confirms it: its time stays, and from then on it is a
    person's. An approved task that is current stops being current: `next_task`
    (the branch's, say) becomes current if it is an open task."""
    stamp = _milestone_stamp(MILESTONES, milestone, at, "task")
    with write_transaction(db):
        task = resolve_task(db, task_id)
        column = MILESTONES[milestone]
        source = meter_set(db, [task["id"]], milestone).get(task["id"]) if task[column] is not None else None
        shown = {name: task[name_column] for name, name_column in MILESTONES.items()}
        stamp, confirmed = _person_mark(shown, milestone, stamp, at, force, source, f"task {task['id']}")
        db.execute(f"UPDATE tasks SET {column} = ? WHERE id = ?", (stamp, task["id"]))
        db.execute(
            "INSERT INTO task_events (task_id, kind, at, milestone, note) VALUES (?, 'milestone', ?, ?, ?)",
            (task["id"], stamp, milestone, note),
        )
        released, now_current = release_approved(db, task["id"], stamp, next_task) if milestone == "approved" else (False, None)
    return Marked(task["id"], stamp, released, now_current, confirmed)


def release_approved(
    db: sqlite3.Connection, task_id: str, approved_at: str, next_task: str | None = None
) -> tuple[bool, str | None]:
    """An approved task stays current no more, so later calls do not pile into closed
    work: if `task_id` is current, `next_task` becomes current when it is another
    open task, else none is; from now, or from an approval a little ahead of the clock.
    The switch's note says why (`meter status` shows it). Returns (released, the task
    current now). Runs in the caller's transaction."""
    require_transaction(db, "release_approved")
    current = current_task(db)
    if current is None or current.task_id != task_id:
        return False, None
    following = (
        next_task
        and db.execute(
            "SELECT id, begin_at FROM tasks WHERE id = ? AND id != ? AND final_approval_at IS NULL", (next_task, task_id)
        ).fetchone()
    )
    chosen = following["id"] if following else None
    at = max(now_stored(), approved_at)
    if following and following["begin_at"] is None:
        db.execute("UPDATE tasks SET begin_at = ? WHERE id = ?", (at, chosen))
    _set_current(db, chosen, at)
    db.execute(
        "INSERT INTO task_events (task_id, kind, at, previous_task_id, note) VALUES (?, 'switch', ?, ?, ?)",
        (chosen, at, task_id, f"{task_id} approved"),
    )
    return True, chosen


def current_note(db: sqlite3.Connection) -> str | None:
    """Why the current task (or none) is current, when the meter chose: `P1-010 approved`."""
    row = db.execute("SELECT note FROM task_events WHERE kind = 'switch' ORDER BY at DESC, id DESC LIMIT 1").fetchone()
    return row["note"] if row else None


class Reopening(NamedTuple):
    """What `meter task ID --reopen` did."""

    task_id: str
    approval: str  # the approval withdrawn
    integration_withdrawn: str | None  # the phase whose automatic "integration complete" mark went with it


def reopen(db: sqlite3.Connection, task_id: str, note: str | None = None) -> Reopening:
    """Withdraw a task's approval: it moves to task_approvals, working time resumes
    (the task is open again) and a later approval is recorded as usual. The
    phase's integration mark goes too when the meter set it (every task was in);
    a person's mark stays."""
    at = now_stored()
    with write_transaction(db):
        task = get_task(db, task_id.strip())
        approved = task["final_approval_at"]
        if approved is None:
            raise MeterError(f"{task['id']} is not approved: there is nothing to reopen")
        db.execute(
            "INSERT INTO task_approvals (task_id, approved_at, reopened_at, note) VALUES (?, ?, ?, ?)",
            (task["id"], approved, at, note),
        )
        db.execute("UPDATE tasks SET final_approval_at = NULL WHERE id = ?", (task["id"],))
        db.execute(
            "INSERT INTO task_events (task_id, kind, at, milestone, note) VALUES (?, 'milestone', ?, 'reopened', ?)",
            (task["id"], at, note),
        )
        withdrawn = _withdraw_automatic_integration(db, task["phase_id"], f"{task['id']} reopened")
    return Reopening(task["id"], approved, withdrawn)


def _withdraw_automatic_integration(db: sqlite3.Connection, phase_id: str | None, reason: str) -> str | None:
    """Clear a phase's "integration complete" when it is the meter's own mark; the
    withdrawal is kept in automatic_marks as a mark without a value."""
    if phase_id is None:
        return None
    phase = get_phase(db, phase_id)
    integrated = phase[PHASE_MILESTONES["integration"]]
    if _meter_source(db, phase, "integration", integrated) is None:  # unset, or a person's
        return None
    db.execute(f"UPDATE phases SET {PHASE_MILESTONES['integration']} = NULL WHERE id = ?", (phase_id,))
    db.execute(
        "INSERT INTO automatic_marks (at, phase_id, milestone, value, source) VALUES (?, ?, 'integration', NULL, ?)",
        (now_stored(), phase_id, f"withdrawn: {reason}"),
    )
    return phase_id


class Removal(NamedTuple):
    """What `meter task ID --delete` or `--merge-into` did."""

    task_id: str
    into: str | None
    calls: int
    commits: int
    test_runs: int
    events: int  # milestone and iteration events merged into `into`
    milestones: list[str]  # milestones `into` took over from the task
    phase_deleted: str | None  # the task's phase, gone with its last task
    was_current: bool  # it was the current task: `into` is now, or none


def _work_of(db: sqlite3.Connection, task_id: str) -> dict[str, int]:
    return {
        "calls": db.execute("SELECT count(*) FROM interactions WHERE task_id = ?", (task_id,)).fetchone()[0],
        "commits": db.execute("SELECT count(*) FROM commits WHERE task_id = ?", (task_id,)).fetchone()[0],
        "test_runs": db.execute("SELECT count(*) FROM test_runs WHERE task_id = ?", (task_id,)).fetchone()[0],
    }


def counted(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def delete_task(db: sqlite3.Connection, task_id: str, move_calls_to: str | None = None) -> Removal:
    """Delete a task (a typo, say). Refused while it has calls, commits or test runs,
    unless `move_calls_to` names the task they go to, with the time it was current."""
    return _remove(db, task_id, move_calls_to, merge=False)


def merge_task(db: sqlite3.Connection, task_id: str, into: str) -> Removal:
    """Merge a task into another: its calls, commits, test runs, sessions, the time it
    was current, its milestone and iteration events go to `into`, which keeps its own
    fields, estimate, budget and milestones and takes the milestones it lacks
    (its begin is the earlier of the two; an approval is never taken over)."""
    return _remove(db, task_id, into, merge=True)


def _remove(db: sqlite3.Connection, task_id: str, into: str | None, merge: bool) -> Removal:
    from taskmeter.store.calls import move_task_calls  # calls.py builds on this module

    with write_transaction(db):
        task = get_task(db, task_id.strip())
        task_id = task["id"]
        target = get_task(db, into.strip()) if into else None
        if target is not None and target["id"] == task_id:
            raise MeterError(f"{task_id} cannot take its own calls: name another task")
        work = _work_of(db, task_id)
        if target is None and any(work.values()):
            found = ", ".join(
                counted(n, noun) for noun, n in zip(("call", "commit", "test run"), work.values(), strict=True) if n
            )
            raise MeterError(f"{task_id} has {found}: give --move-calls-to TASK to keep them, or --merge-into TASK")
        into = target["id"] if target is not None else None
        # The time it was current goes with its calls, or to no task: never to the task before it.
        db.execute("UPDATE task_events SET task_id = ? WHERE kind = 'switch' AND task_id = ?", (into, task_id))
        # A switch into the task already current is no switch (no context switch either).
        db.execute(
            "DELETE FROM task_events WHERE id IN (SELECT id FROM (SELECT id, task_id,"
            "   lag(task_id, 1, '') OVER (ORDER BY at, id) AS before FROM task_events WHERE kind = 'switch')"
            " WHERE task_id IS ? AND before IS ?)",
            (into, into),
        )
        if into:
            db.execute("UPDATE task_events SET previous_task_id = ? WHERE previous_task_id = ?", (into, task_id))
        events = 0
        taken: list[str] = []
        if merge:
            assert target is not None  # merge_task always names the task to merge into
            events = db.execute(
                "UPDATE task_events SET task_id = ? WHERE task_id = ? AND kind IN ('milestone', 'iteration')", (into, task_id)
            ).rowcount
            taken = _take_milestones(db, task, target)
        for table in ("commits", "test_runs"):
            db.execute(f"UPDATE {table} SET task_id = ? WHERE task_id = ?", (into, task_id))
        if into:
            db.execute("UPDATE session_tasks SET task_id = ? WHERE task_id = ?", (into, task_id))
            move_task_calls(db, task_id, into)
        else:
            db.execute("DELETE FROM session_tasks WHERE task_id = ?", (task_id,))
        current = current_task(db)
        was_current = current is not None and current.task_id == task_id
        if current is not None and was_current:
            _set_current(db, into, current.since)
        db.execute("UPDATE alerts SET cleared_at = ? WHERE task_id = ? AND cleared_at IS NULL", (now_stored(), task_id))
        db.execute("DELETE FROM budgets WHERE scope = 'task' AND target = ?", (task_id,))
        db.execute("DELETE FROM automatic_marks WHERE task_id = ?", (task_id,))
        # Its rollup rows are all zero now that its calls have gone.
        db.execute("DELETE FROM task_usage WHERE task_key = ?", (task_id,))
        db.execute("DELETE FROM usage_quarters WHERE task_key = ?", (task_id,))
        db.execute("DELETE FROM tasks WHERE id = ?", (task_id,))
        phase_deleted = _delete_empty_phase(db, task["phase_id"])
    return Removal(task_id, into, work["calls"], work["commits"], work["test_runs"], events, taken, phase_deleted, was_current)


def _take_milestones(db: sqlite3.Connection, task: sqlite3.Row, target: sqlite3.Row) -> list[str]:
    """`target` takes the earlier begin and each milestone it lacks, but never an approval;
    the automatic marks behind the milestones taken go with them."""
    taken = {}
    if task["begin_at"] and (target["begin_at"] is None or task["begin_at"] < target["begin_at"]):
        taken["begin"] = task["begin_at"]
    for milestone in ("initial", "tests", "validated"):
        column = MILESTONES[milestone]
        if task[column] and target[column] is None:
            taken[milestone] = task[column]
    _update(db, "tasks", target["id"], {MILESTONES[milestone]: stamp for milestone, stamp in taken.items()})
    if taken:
        db.execute(
            f"UPDATE automatic_marks SET task_id = ? WHERE task_id = ? AND milestone IN ({', '.join('?' for _ in taken)})",
            (target["id"], task["id"], *taken),
        )
    return list(taken)


def _delete_empty_phase(db: sqlite3.Connection, phase_id: str) -> str | None:
    """A phase left with no task and nothing a person wrote about it (a typo's phase) goes too."""
    phase = db.execute("SELECT * FROM phases WHERE id = ?", (phase_id,)).fetchone()
    if db.execute("SELECT 1 FROM tasks WHERE phase_id = ? LIMIT 1", (phase_id,)).fetchone():
        return None
    if any(phase[column] is not None for column in PHASE_INPUTS):
        return None
    if db.execute("SELECT 1 FROM budgets WHERE scope = 'phase' AND target = ?", (phase_id,)).fetchone():
        return None
    db.execute("DELETE FROM automatic_marks WHERE phase_id = ?", (phase_id,))
    db.execute("DELETE FROM phases WHERE id = ?", (phase_id,))
    return phase["id"]


def auto_mark(
    db: sqlite3.Connection, table: str, record_id: str, milestone: str, stamp, source: str, replace_own: bool = False
) -> bool:
    """A milestone or value the meter saw happen (a commit, a test run, a merge):
    recorded only where none is set, or, with `replace_own`, where the value is
    the meter's own last one, so a person's mark is never overwritten; its
    source goes to automatic_marks (and the event's note). `table` is tasks or
    phases; `milestone` a milestone name or a task column (coverage_actual).
    Returns whether it was recorded. Runs in the caller's transaction."""
    require_transaction(db, "auto_mark")
    order = MILESTONES if table == "tasks" else PHASE_MILESTONES
    column = order.get(milestone, milestone)
    condition = f"{column} IS NULL"
    params: list = [stamp, record_id]
    # A task milestone a person marked since (or confirmed) is theirs, whatever its value.
    marked_by_person = table == "tasks" and milestone in MILESTONES and record_id not in meter_set(db, [record_id], milestone)
    if replace_own and not marked_by_person:
        own = db.execute(
            "SELECT value FROM automatic_marks WHERE coalesce(task_id, phase_id) = ? AND milestone = ? ORDER BY id DESC LIMIT 1",
            (record_id, milestone),
        ).fetchone()
        if own is not None:
            condition += f" OR {column} = ?"
            params.append(own["value"])
    changed = db.execute(f"UPDATE {table} SET {column} = ? WHERE id = ? AND ({condition})", params).rowcount
    if changed:
        task_id, phase_id = (record_id, None) if table == "tasks" else (None, record_id)
        db.execute(
            "INSERT INTO automatic_marks (at, task_id, phase_id, milestone, value, source) VALUES (?, ?, ?, ?, ?, ?)",
            (now_stored(), task_id, phase_id, milestone, stamp, source),
        )
        if task_id and milestone in MILESTONES:
            db.execute(
                "INSERT INTO task_events (task_id, kind, at, milestone, note) VALUES (?, 'milestone', ?, ?, ?)",
                (task_id, stamp, milestone, AUTOMATIC_NOTE + source),
            )
    return bool(changed)


def phase_milestones(phase, task_begins) -> dict[str, str | None]:
    """A phase's milestones as its report shows them (PHASE_BEGIN ...), in order:
    each as recorded, and the begin, while nobody marked it, derived from the
    earliest begin of its tasks. The report and `meter phase --mark` both use it."""
    values = {name: phase[column] for name, column in PHASE_MILESTONES.items()}
    if values["begin"] is None:
        values["begin"] = min((begin for begin in task_begins if begin), default=None)
    return values


# What a phase's begin is, until someone marks it.
DERIVED_BEGIN = "the earliest begin of its tasks"


def _meter_source(db: sqlite3.Connection, phase: sqlite3.Row, milestone: str, value: str | None) -> str | None:
    """Where the meter got a phase milestone nobody marked: derived, or the
    source of its automatic mark; None when a person marked it (or none is set)."""
    if value is None:
        return None
    if phase[PHASE_MILESTONES[milestone]] is None:
        return DERIVED_BEGIN
    marked = db.execute(
        "SELECT 1 FROM phase_marks WHERE phase_id = ? AND milestone = ? AND value = ?", (phase["id"], milestone, value)
    ).fetchone()
    if marked:
        return None
    seen = db.execute(
        "SELECT value, source FROM automatic_marks WHERE phase_id = ? AND milestone = ? ORDER BY id DESC LIMIT 1",
        (phase["id"], milestone),
    ).fetchone()
    return seen["source"] if seen is not None and seen["value"] == value else None


class PhaseMark(NamedTuple):
    stamp: str
    confirmed: str | None  # the meter's source a person confirmed, or None for a time they gave


def mark_phase(
    db: sqlite3.Connection, phase_id: str, milestone: str, *, at: datetime | None = None, force: bool = False
) -> PhaseMark:
    """Record a Level 2 phase timestamp. Marking one the meter derived or saw,
    without `at`, confirms it: its time stays, and the mark says a person confirmed it."""
    stamp = _milestone_stamp(PHASE_MILESTONES, milestone, at, "phase")
    with write_transaction(db):
        phase = get_phase(db, phase_id)
        begins = [row[0] for row in db.execute("SELECT begin_at FROM tasks WHERE phase_id = ?", (phase["id"],))]
        shown = phase_milestones(phase, begins)
        source = _meter_source(db, phase, milestone, shown[milestone])
        stamp, confirmed = _person_mark(shown, milestone, stamp, at, force, source, f"phase {phase['id']}")
        db.execute(f"UPDATE phases SET {PHASE_MILESTONES[milestone]} = ? WHERE id = ?", (stamp, phase["id"]))
        db.execute(
            "INSERT INTO phase_marks (at, phase_id, milestone, value, confirmed) VALUES (?, ?, ?, ?, ?)",
            (now_stored(), phase["id"], milestone, stamp, confirmed),
        )
    return PhaseMark(stamp, confirmed)


def add_iteration(
    db: sqlite3.Connection, task_id: str | None, *, at: datetime | None = None, note: str | None = None
) -> tuple[str, int]:
    """Record a retry or rework; returns (task ID, iterations so far)."""
    stamp = to_stored(at or now())
    with write_transaction(db):
        task = resolve_task(db, task_id)
        db.execute(
            "INSERT INTO task_events (task_id, kind, at, note) VALUES (?, 'iteration', ?, ?)",
            (task["id"], stamp, note),
        )
        count = iterations(db, task["id"])
    return task["id"], count


def iterations_of(db: sqlite3.Connection, task_ids: list[str]) -> dict[str, int]:
    """ITERATIONS_COUNT per task: the first attempt, every retry recorded with
    `meter iteration`, and every red full test run that is rework (automation/testruns.py)."""
    from taskmeter.store.testruns import reworking_runs  # it reads tasks through this module

    red_runs = reworking_runs(db, task_ids)
    placeholders = ", ".join("?" for _ in task_ids)
    reworks = dict(
        db.execute(
            f"SELECT task_id, count(*) FROM task_events WHERE kind = 'iteration' AND task_id IN ({placeholders})"
            " GROUP BY task_id",
            task_ids,
        ).fetchall()
    )
    return {task_id: 1 + reworks.get(task_id, 0) + len(red_runs[task_id]) for task_id in task_ids}


def iterations(db: sqlite3.Connection, task_id: str) -> int:
    return iterations_of(db, [task_id])[task_id]


def natural_key(identifier: str) -> list:
    """P2 before P10, P3 before P3.5."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", identifier)]


def list_task_rows(db: sqlite3.Connection, phase_id: str | None = None) -> list[sqlite3.Row]:
    """Tasks in phase and natural ID order (P1-2 before P1-10)."""
    where, params = "", []
    if phase_id is not None:
        where, params = "WHERE phase_id = ?", [get_phase(db, phase_id)["id"]]
    rows = db.execute(f"SELECT * FROM tasks {where}", params).fetchall()
    return sorted(rows, key=lambda row: (natural_key(row["phase_id"]), natural_key(row["id"])))


def ensure_task(db: sqlite3.Connection, task_id: str, at: str) -> str:
    """The stored spelling of `task_id`, creating the task (begun at `at`) and its
    phase when a call names a task nobody has set yet. Runs in the caller's transaction."""
    require_transaction(db, "ensure_task")
    row = db.execute("SELECT id FROM tasks WHERE id = ?", (task_id,)).fetchone()
    if row is not None:
        return row["id"]
    task_id = validate_task_id(task_id)
    phase_id = infer_phase(task_id)
    _ensure_phase(db, phase_id, at)
    db.execute("INSERT INTO tasks (id, phase_id, created_at, begin_at) VALUES (?, ?, ?, ?)", (task_id, phase_id, at, at))
    return task_id


def tasks_by_id(db: sqlite3.Connection, task_ids: list[str]) -> list[sqlite3.Row]:
    """The rows of the tasks named that exist, in no particular order."""
    placeholders = ", ".join("?" for _ in task_ids)
    return db.execute(f"SELECT * FROM tasks WHERE id IN ({placeholders})", task_ids).fetchall()


def phase_tasks_without(db: sqlite3.Connection, phase_id: str, milestone: str) -> int:
    """How many tasks of the phase have no `milestone` (one of MILESTONES) yet."""
    return db.execute(
        f"SELECT count(*) FROM tasks WHERE phase_id = ? AND {MILESTONES[milestone]} IS NULL", (phase_id,)
    ).fetchone()[0]


def bind_session(db: sqlite3.Connection, session_id: str, task_id: str, at: str) -> None:
    """From now on, the calls of a client's session (Claude Code's) go to `task_id`."""
    with write_transaction(db):
        db.execute(
            "INSERT INTO session_tasks (session_id, task_id, bound_at) VALUES (?, ?, ?)"
            " ON CONFLICT(session_id) DO UPDATE SET task_id = excluded.task_id, bound_at = excluded.bound_at",
            (session_id, task_id, at),
        )


def task_current_at(db: sqlite3.Connection, at: str) -> str | None:
    """The task that `meter set-task` had made current at the moment `at`."""
    row = db.execute(
        "SELECT task_id FROM task_events WHERE kind = 'switch' AND at <= ? ORDER BY at DESC, id DESC LIMIT 1", (at,)
    ).fetchone()
    return row["task_id"] if row else None


def switched_into_between(db: sqlite3.Connection, task_id: str, after: str, until: str) -> bool:
    """Did `meter set-task` make `task_id` current again between two moments?"""
    row = db.execute(
        "SELECT 1 FROM task_events WHERE kind = 'switch' AND task_id = ? AND at > ? AND at <= ? LIMIT 1",
        (task_id, after, until),
    ).fetchone()
    return row is not None
