"""What each page shows. Every number comes from the analytics the CLI's JSON
comes from (never computed a second time here); these functions only choose
them and shape each chart's data. They run in a worker thread with their own
sqlite3 connection (see app.py)."""

import sqlite3
from datetime import date, timedelta
from pathlib import Path
from typing import Literal

from taskmeter.analytics import forecasts, history
from taskmeter.analytics.budgets import Defaults
from taskmeter.analytics.listings import call_record, show_record, task_records
from taskmeter.analytics.periods import usage_report
from taskmeter.analytics.records import PhaseReport, TaskRecord
from taskmeter.analytics.reports import overview_report, phase_report, task_report
from taskmeter.analytics.snapshot import current_state, recording
from taskmeter.dashboard import edits
from taskmeter.errors import MeterError
from taskmeter.lifecycle import START_ADVICE
from taskmeter.money import usd
from taskmeter.store import budgets, interactions, proxies, tasks
from taskmeter.store import texts as call_texts
from taskmeter.store.interactions import CallFilter
from taskmeter.terminal import moment
from taskmeter.timefmt import (
    from_stored,
    hour_label,
    local_hour_starts,
    local_midnight,
    now,
    now_stored,
    seconds_between,
    to_stored,
)

FEED_LENGTH = 50  # calls on the Now page before the live ones
CALLS_SHOWN = 200  # a task's newest calls, with their text
UNASSIGNED_SHOWN = 100
# The pass/fail tiles of the Phases page; the fifth target is the trend chart.
TILE_METRICS = ("hallucination_rate", "iteration_efficiency", "projection_accuracy", "tracking_completeness")
USAGE_PERIODS = ("daily", "weekly", "monthly")
FIRST_DAY = date(1970, 1, 1)  # the hourly chart's earliest day: local time before it is not everywhere known


def chart(kind: str, labels: list, datasets: list[dict], stacked: bool = False, money_axis: bool = False) -> dict:
    """A chart's data as the page embeds it (static/dashboard.js draws it): datasets
    carry `label`, `data` and optionally `type` and `axis` ("money" for the right axis)."""
    return {"kind": kind, "labels": labels, "datasets": datasets, "stacked": stacked, "money_axis": money_axis}


def costs(label: str, values: list, **options) -> dict:
    """A dataset of USD amounts; `text` has each one as the tables write it, for the tooltips."""
    return {"label": label, "data": values, "text": [usd(value or 0) for value in values], **options}


def feed_call(row: dict) -> dict:
    """A call as the live feed and the call tables show it: `log --json`'s record and its row number."""
    return {**call_record(row), "rowid": row["rowid"]}


def proxy_state(db: sqlite3.Connection, db_path: Path) -> dict:
    """Whether a proxy records to this database, by the rule `meter status` follows
    (snapshot.recording): `state` is recording, not-recording or down; `text` says it;
    `problems`, what `meter status` warns of its OpenTelemetry export, a line each."""
    from taskmeter import telemetry

    running = proxies.running(db)
    if not running:
        return {"state": "down", "text": f"No proxy is running: AI calls are not metered ({START_ADVICE})", "problems": []}
    problems = telemetry.export_problems(telemetry.read_state(db_path), moment)
    problems = [f"{telemetry.PROBLEM_LABEL}: {problem}" for problem in problems]
    if recording(running):
        proxy = next(proxy for proxy in running if proxy["recording"] == proxies.RECORDING)
        return {"state": "recording", "text": f"Proxy recording: pid {proxy['pid']} on {proxy['listen']}", "problems": problems}
    return {"state": "not-recording", "text": f"Proxy running, NOT RECORDING: {running[0]['recording']}", "problems": problems}


def task_choices(db: sqlite3.Connection) -> list[dict]:
    """The tasks a call can be moved to, for the retag lists: the newest begun first."""
    rows = db.execute("SELECT id, title FROM tasks ORDER BY begin_at IS NULL, begin_at DESC, id").fetchall()
    return [{"id": row["id"], "title": row["title"]} for row in rows]


def last_rowid(db: sqlite3.Connection) -> int:
    return db.execute("SELECT coalesce(max(rowid), 0) FROM interactions").fetchone()[0]


def chart_day(text: str | None) -> date | None:
    """The Now page's `day=YYYY-MM-DD`: the local day its hourly chart shows (today without it)."""
    if text is None:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        day = None
    if day is None or not FIRST_DAY <= day <= now().astimezone().date():
        raise MeterError(f"day must be a date from {FIRST_DAY} to today, such as 2026-10-25, not {text[:24]!r}")
    return day


def now_page(db: sqlite3.Connection, idle_seconds: float, defaults: Defaults, day: date | None = None) -> dict:
    state = current_state(db, defaults)
    report = task_report(db, state["task_id"], idle_seconds=idle_seconds) if state["task_id"] else None
    today = now().astimezone().date()
    start, end = local_midnight(day or today), local_midnight((day or today) + timedelta(days=1))
    hourly = usage_report(db, "hourly", since=to_stored(start), until=to_stored(end))
    by_hour = {group["start"]: group for group in hourly["periods"]}
    # A bar per real hour (23 or 25 on a day whose clock changes), each labelled with its zone;
    # today's end with the hour under way.
    hours = [to_stored(hour) for hour in local_hour_starts(start, min(end, now()))]
    return {
        "task": report,
        "budget": state["budget"],
        "alerts": state["alerts"],
        "calls": [feed_call(row) for row in interactions.recent(db, FEED_LENGTH)],
        "last_rowid": last_rowid(db),
        "hourly": hourly,
        "day": None if day in (None, today) else day.isoformat(),
        "charts": {
            "hourly": chart(
                "bar",
                [hour_label(h)[11:] for h in hours],
                [
                    {"label": "Tokens", "data": [(by_hour[h]["tokens"]["total"] or 0) if h in by_hour else 0 for h in hours]},
                    costs(
                        "Cost (USD)",
                        [(by_hour[h]["cost_usd"] or 0) if h in by_hour else 0 for h in hours],
                        type="line",
                        axis="money",
                    ),
                ],
                money_axis=True,
            )
        },
    }


def _forecast_lines(pairs: list[tuple[str, str]]) -> list[dict]:
    """A forecast's `NAME: value` lines (analytics/forecasts.py) as the page's table rows."""
    return [{"name": name.capitalize(), "value": value} for name, value in pairs]


def burndown(report: PhaseReport, forecast: dict) -> dict:
    """The phase's estimated work left (hours) against its working time (hours): a point
    at each approval (its task's estimate off, its working time on) and now; then the
    forecast's fan, from now to no work left after the working time left (low, median, high)."""
    hours = 3600  # seconds
    approved = sorted(
        (t for t in report["tasks"] if t["status"] == "approved"), key=lambda t: t["final_approval_timestamp"] or ""
    )
    left = sum(t["estimated_duration"] or 0 for t in report["tasks"]) / hours
    worked = 0.0
    steps = [{"x": 0.0, "y": left}]
    for task in approved:
        worked += (task["actual_duration"] or 0) / hours
        left -= (task["estimated_duration"] or 0) / hours
        steps.append({"x": worked, "y": left})
    worked += sum(t["actual_duration"] or 0 for t in report["tasks"] if t["status"] != "approved") / hours
    steps.append({"x": worked, "y": left})
    datasets = [{"label": "Estimated work left", "type": "line", "data": steps}]
    spread = forecast["working_seconds"].get("left")
    if spread and forecast["open_tasks"]:
        for end, label in (("low", "Forecast, low"), ("point", "Forecast, median"), ("high", "Forecast, high")):
            datasets.append(
                {"label": label, "type": "line", "data": [{"x": worked, "y": left}, {"x": worked + spread[end] / hours, "y": 0}]}
            )
    return chart("scatter", [], datasets)


def phases_page(db: sqlite3.Connection, phase_id: str | None, idle_seconds: float, defaults: Defaults | None = None) -> dict:
    ordered = history.phase_ids(db)
    if not ordered:
        return {"phase_ids": [], "report": None, "charts": {}}
    if phase_id is None:
        current = tasks.current_task(db)
        phase_id = tasks.get_task(db, current.task_id)["phase_id"] if current else ordered[-1]
    report = phase_report(db, phase_id, idle_seconds=idle_seconds)
    trend = overview_report(db)["phases"]
    per_task = [phase["tokens_per_task_avg"] for phase in trend]
    # The seed's target: each phase 10% under the one before.
    target = [None] + [None if before is None else before * 0.9 for before in per_task[:-1]]
    forecast = forecasts.phase_forecast(db, report["phase_id"], idle_seconds, budget_defaults=defaults)
    return {
        "phase_ids": ordered,
        "report": report,
        "forecast": forecast,
        "forecast_lines": _forecast_lines(forecasts.phase_lines(forecast, lambda stored: moment(stored, short=False))),
        "inputs": dict(tasks.get_phase(db, report["phase_id"])),
        "budget": own_budget(db, "phase", report["phase_id"]),
        "trend": trend,
        "tiles": [target for target in report["pattern_effectiveness"] if target["metric"] in TILE_METRICS],
        "charts": {
            "burndown": burndown(report, forecast),
            "tasks": chart(
                "bar",
                [task["task_id"] for task in report["tasks"]],
                [{"label": "Tokens", "data": [task["token_count_used"] or 0 for task in report["tasks"]]}],
            ),
            "trend": chart(
                "line",
                [phase["phase_id"] for phase in trend],
                [
                    {"label": "Tokens per task", "data": per_task},
                    {"label": "Target: -10% per phase", "data": target},
                ],
            ),
        },
    }


def local_day(text: str, what: str) -> date:
    """A local day a form names, `2026-10-25`, or a one-line refusal."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise MeterError(f"{what} must be a date such as 2026-10-25, not {text[:24]!r}") from None


def tasks_page(
    db: sqlite3.Connection, idle_seconds: float, first: date | None, last: date | None, search: str, status: str
) -> dict:
    """Every task as `meter tasks --json` gives it; with `first`..`last` (local days, both
    included), those under way then: begun before the range ends, not approved before it begins.
    `search`: in the ID or the title, any case."""
    if first and last and last < first:
        raise MeterError(f"the range ends ({last}) before it begins ({first})")
    start = to_stored(local_midnight(first)) if first else None
    end = to_stored(local_midnight(last + timedelta(days=1))) if last else None
    needle = search.strip().casefold()
    shown = []
    for task in task_records(db, idle_seconds=idle_seconds, intervals=False):
        begun, approved = task["begin_timestamp"], task["final_approval_timestamp"]
        if start or end:
            if begun is None or (end and begun >= end) or (start and (approved or now_stored()) < start):
                continue
        if needle and needle not in task["task_id"].casefold() and needle not in (task["title"] or "").casefold():
            continue
        if status and task["status"] != status:
            continue
        shown.append(task)
    return {"tasks": shown, "filters": {"from": first, "to": last, "search": search, "status": status}}


def own_budget(db: sqlite3.Connection, scope: str, target: str) -> dict:
    """A task's or phase's own budget as its form shows it: the amounts as `--budget` takes them."""
    budget = budgets.own_budget(db, scope, target)
    return {
        "amounts": edits.budget_shown(budget),
        "on_exceeded": (budget["on_exceeded"] if budget else None) or "",
    }


def call_page(db: sqlite3.Connection, reference: str) -> dict:
    """One call as `meter show ID --json` gives it (`show`), and its row for the page."""
    interaction_id = interactions.resolve_id(db, reference)
    row = interactions.one(db, interaction_id)
    return {
        "call": feed_call(row),
        "show": show_record(db, row),
        "seconds": seconds_between(row["started_at"], row["ended_at"]) if row["ended_at"] else None,
        "first_byte_seconds": seconds_between(row["started_at"], row["first_byte_at"]) if row["first_byte_at"] else None,
        "task_choices": task_choices(db),
    }


def task_page(db: sqlite3.Connection, task_id: str, idle_seconds: float) -> dict:
    task_id = tasks.get_task(db, task_id)["id"]
    report = task_report(db, task_id, idle_seconds=idle_seconds)
    models = usage_report(db, "models", task_id=task_id)
    calls = []
    for row in interactions.recent(db, CALLS_SHOWN, CallFilter(task_id=task_id)):
        calls.append({**feed_call(row), "texts": call_texts.of_call(db, row["id"])})
    sources = report["tokens_by_source"]
    forecast = forecasts.task_forecast(db, task_id, idle_seconds).record
    return {
        "report": report,
        "forecast": forecast,
        "forecast_lines": _forecast_lines(forecasts.task_lines(forecast)),
        "models": models,
        "calls": calls,
        "task_choices": task_choices(db),
        "inputs": dict(tasks.get_task(db, task_id)),
        "budget": own_budget(db, "task", task_id),
        "timeline": timeline(report),
        "charts": {
            "models": chart(
                "bar",
                [model["model"] for model in models["models"]],
                [{"label": "Tokens", "data": [model["tokens"]["total"] or 0 for model in models["models"]]}],
            ),
            "sources": chart("bar", list(sources), [{"label": "Tokens", "data": [value or 0 for value in sources.values()]}]),
        },
    }


Milestone = Literal[
    "begin_timestamp",
    "initial_completion_timestamp",
    "tests_completion_timestamp",
    "validation_timestamp",
    "final_approval_timestamp",
]
MILESTONES: list[tuple[Milestone, str]] = [
    ("begin_timestamp", "Begin"),
    ("initial_completion_timestamp", "Initial"),
    ("tests_completion_timestamp", "Tests"),
    ("validation_timestamp", "Validation"),
    ("final_approval_timestamp", "Approval"),
]
TIMELINE_WIDTH = 1000  # the SVG's own units; it scales to the page


def timeline(report: TaskRecord) -> dict | None:
    """Positions (0..TIMELINE_WIDTH) of the task's milestones and working intervals,
    for a server-drawn SVG: attributes, not inline styles, so the CSP stays strict."""
    marked = [(label, at) for key, label in MILESTONES if (at := report[key])]
    moments = [at for _, at in marked] + [b for interval in report["working_intervals"] for b in interval]
    if not moments:
        return None
    start = min(from_stored(m) for m in moments)
    end = max(from_stored(m) for m in moments)
    span = max((end - start).total_seconds(), 1)

    def x(stored: str) -> float:
        return round(TIMELINE_WIDTH * (from_stored(stored) - start).total_seconds() / span, 1)

    return {
        "width": TIMELINE_WIDTH,
        "start": to_stored(start),
        "end": to_stored(end),
        "milestones": [{"label": label, "at": at, "x": x(at)} for label, at in marked],
        "intervals": [{"start": a, "end": b, "x": x(a), "width": max(x(b) - x(a), 1)} for a, b in report["working_intervals"]],
    }


def history_page(db: sqlite3.Connection, period: str) -> dict:
    report = usage_report(db, period)
    labels = [group["period"] for group in report["periods"]]
    models = sorted({model["model"] for group in report["periods"] for model in group["models"]})

    def per_model(model: str, value) -> list:
        found = [{m["model"]: m for m in group["models"]}.get(model) for group in report["periods"]]
        return [value(m) or 0 if m else 0 for m in found]

    unassigned = interactions.recent(db, UNASSIGNED_SHOWN, CallFilter(unassigned=True))
    return {
        "period": period,
        "report": report,
        "unassigned": [feed_call(row) for row in unassigned],
        "task_choices": task_choices(db),
        "charts": {
            "tokens": chart(
                "bar",
                labels,
                [{"label": model, "data": per_model(model, lambda m: m["tokens"]["total"])} for model in models],
                stacked=True,
            ),
            "cost": chart(
                "bar",
                labels,
                [costs(model, per_model(model, lambda m: m["cost_usd"])) for model in models],
                stacked=True,
            ),
        },
    }
