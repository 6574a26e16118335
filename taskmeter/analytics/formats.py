"""Rendering reports: markdown in the seed's execution-log form, a terminal view,
JSON with the seed's field names in snake_case, and CSV. Nothing is computed here."""

import io
import json
from collections.abc import Mapping
from typing import Any

from taskmeter.analytics.metrics import NOT_MEASURED, NOT_YET, PHASE_SECTIONS, TASK_SECTIONS
from taskmeter.money import usd
from taskmeter.store.tasks import TASK_FIELDS
from taskmeter.timefmt import display, format_duration

TYPE_CHECKING = False
if TYPE_CHECKING:  # the report types are for the type checker: importing them costs each report's start-up
    from taskmeter.analytics.records import (
        BlocksReport,
        OverviewReport,
        PhaseReport,
        SessionsReport,
        TargetCheck,
        TaskReport,
        UsageReport,
        UsageStats,
    )

PLACEHOLDER = "_____"  # the seed's mark for a field not filled

_TIMESTAMPS = {*TASK_SECTIONS["TIMESTAMPS (ISO 8601 Format)"], *PHASE_SECTIONS["PHASE-LEVEL TIMESTAMPS"]}
_DURATIONS = {"estimated_duration", "actual_duration", "estimated_total", "actual_total"}
_PERCENT_INPUTS = {*(field.seed for field in TASK_FIELDS if field.kind == "percent"), "test_coverage_overall"}
_SUCCESS = {"pass": "✅ PASS", "pending": "⏳ PENDING", "fail": "❌ FAIL"}
# What a context switch is (docs/metrics.md, store/sessions.py), said beside the count.
CONTEXT_SWITCHES_NOTE = "returns to the task after another one, and agent sessions after its first"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} hours ({format_duration(seconds)})"


def _tokens(value: int) -> str:
    return f"{value:,} tokens"


def _open(name: str, fields: Mapping[str, Any]) -> str:
    """A task's figures so far, before its approval: no verdict on unfinished work."""
    if name == "iterations_count":
        return f"open: {fields['iterations_count']} so far"
    so_far = f"{format_duration(fields['actual_duration'])} so far of {format_duration(fields['estimated_duration'])} estimated"
    return f"open: {so_far}" if name == "variance" else f"open: {fields['efficiency_ratio']:.2f} ({so_far})"


def _phase_open(name: str, fields: Mapping[str, Any]) -> str:
    """A phase field taken over approved tasks, while it has none: the open tasks' figures so far."""
    open_tasks = fields["open_tasks_so_far"]
    count = f"{len(open_tasks)} open task{'s' if len(open_tasks) != 1 else ''}"
    if name == "tokens_per_task_avg":
        so_far = f"{fields['total_tokens_used'] or 0:,} tokens so far over {count}"
    elif name == "average_iterations_per_task":
        iterations = sum(t["iterations_count"] for t in fields["tasks"] if t["status"] != "approved")
        so_far = f"{iterations} iterations so far over {count}"
    else:
        worked = sum(t["actual_duration"] or 0 for t in open_tasks)
        estimates = [t["estimated_duration"] for t in open_tasks if t["estimated_duration"]]
        against = f" of {format_duration(sum(estimates))} estimated" if estimates else ""
        so_far = f"{count}, {format_duration(worked)} so far{against}"
    return f"open: no approved task yet ({so_far})"


# Phase fields over approved tasks only: "open" until one is approved.
_APPROVED_ONLY = {"variance", "efficiency_ratio", "average_iterations_per_task", "tokens_per_task_avg"}


def describe(name: str, fields: Mapping[str, Any], utc: bool = False) -> str | None:
    """The seed-style text of one field, or None when it has no value; times local with
    their offset, or UTC with `utc`."""
    value = fields.get(name)
    if value is None:
        if name in _APPROVED_ONLY and fields.get("tasks_completed") == 0 and fields.get("open_tasks_so_far"):
            return _phase_open(name, fields)
        return None
    if name in _TIMESTAMPS:
        return display(value, utc)
    if name in _DURATIONS:
        text = _hours(value)
        if name in ("actual_duration", "actual_total"):
            text += " working time"
        if name == "actual_duration" and fields.get("actual_duration_is_elapsed_so_far"):
            text += " so far (task open)"
        if name == "actual_total" and fields.get("open_tasks_so_far"):
            text += ", open tasks so far"
        return text
    if fields.get("verdict") == "open" and name in ("variance", "efficiency_ratio", "iterations_count"):
        return _open(name, fields)
    if name == "variance":
        direction = "behind schedule" if value > 0 else "ahead of schedule"
        return f"{value / 3600:+.2f} hours ({format_duration(abs(value))} {direction})"
    if name == "efficiency_ratio":
        if value == 1:
            return "1.00 (as estimated)"
        change = abs(1 - value) * 100
        return f"{value:.2f} ({change:.0f}% {'faster' if value < 1 else 'slower'} than estimated)"
    if name == "parallel_efficiency":
        return f"{format_duration(value)} saved by parallel work (tasks' working time {format_duration(value + fields['actual_total'])} in {format_duration(fields['actual_total'])})"
    if name in _PERCENT_INPUTS:
        return f"{value:g}%"
    if name in ("token_count_used", "total_tokens_used"):
        return _tokens(value)
    if name == "tokens_per_task_avg":
        return f"{value:,.0f} tokens"
    if name == "context_switches":
        return f"{value} ({CONTEXT_SWITCHES_NOTE})"
    if name in ("ai_interactions", "ai_interactions_total"):
        return f"{value} interactions"
    if name in ("hallucination_rate",):
        flagged = fields.get("hallucination_count", fields.get("hallucination_count_total"))
        calls = fields.get("ai_interactions", fields.get("ai_interactions_total"))
        return f"{value * 100:.2f}% ({flagged} / {calls} interactions)"
    if name == "iterations_count":
        return f"{value} (completed first try)" if value == 1 else f"{value} ({value - 1} rework)"
    if name == "tasks_completed":
        total = fields["tasks_total"]
        return f"{value} / {total} ({value / total:.0%})" if total else str(value)
    if name == "tasks_failed_first_attempt":
        reworked = fields.get("tasks_reworked") or []
        return f"{value} ({', '.join(reworked)} required rework)" if reworked else str(value)
    if name == "average_iterations_per_task":
        return f"{value:.2f} iterations"
    if name == "theory_accuracy":
        return f"{value:.0%} ({fields['projections_materialized']}/{fields['projections_total']} projections materialized)"
    if name == "success_criteria":
        return _SUCCESS.get(value, value)
    if name == "estimated_total" and fields.get("tasks_without_estimate"):
        return None
    return str(value)


def _block(fields: Mapping[str, Any], sections: dict[str, list[str]], utc: bool = False) -> list[str]:
    lines = []
    width = max(len(name) for section in sections.values() for name in section) + 2
    for title, names in sections.items():
        lines.append(f"=== {title} ===")
        for name in names:
            text = describe(name, fields, utc)
            lines.append(f"{(name.upper() + ':'):<{width}}{text if text is not None else PLACEHOLDER}")
        lines.append("")
    return lines[:-1]


def _beyond(fields: Mapping[str, Any]) -> list[str]:
    tokens = fields["tokens"]
    by_source = fields["tokens_by_source"]
    cost = fields["cost_usd"]
    unpriced = fields["unpriced_interactions"]
    lines = ["=== COST AND TOKEN DETAIL (taskmeter) ==="]
    lines.append(
        "TOKENS:            "
        + (
            f"{tokens['total']:,} = input {tokens['input_total'] or 0:,} (cache read {tokens['cache_read'] or 0:,}, "
            f"cache write {tokens['cache_write'] or 0:,}) + output {tokens['output_total'] or 0:,} (reasoning {tokens['reasoning'] or 0:,})"
            if tokens["total"] is not None
            else PLACEHOLDER
        )
    )
    lines.append(
        "TOKENS_BY_SOURCE:  "
        + ", ".join(f"{source.replace('_', ' ')} {tokens:,}" for source, tokens in by_source.items())
        + (f" ({fields['agent_log_share']:.1%} of the tokens, from the agents' own logs)" if fields["agent_log_share"] else "")
    )
    cost_text = usd(cost) if cost is not None else PLACEHOLDER
    if unpriced:
        cost_text += f" ({unpriced} interactions with no known price not included)"
    if fields["cost_api_equivalent_usd"]:
        cost_text += (
            f" (of which {usd(fields['cost_api_equivalent_usd'])} API-equivalent: subscription calls, not billed per token)"
        )
    lines.append(f"COST_USD:          {cost_text}")
    lines.append(
        f"FAILED_CALLS:      {fields['failed_calls']} (never reached a model: no response, HTTP 4xx or 5xx; not AI interactions)"
    )
    for label, key in (("CACHE_HIT_RATIO", "cache_hit_ratio"), ("REASONING_SHARE", "reasoning_share")):
        value = fields[key]
        lines.append(f"{label + ':':<19}{f'{value:.1%}' if value is not None else PLACEHOLDER}")
    rework = fields.get("rework_tokens")
    lines.append(
        f"REWORK_TOKENS:     {f'{rework:,} (calls after a flagged hallucination)' if rework is not None else 'none (no flagged hallucination)'}"
    )
    if "wall_duration" in fields:
        wall = fields["wall_duration"]
        lines.append(
            f"ELAPSED_WALL_TIME: {format_duration(wall) if wall is not None else PLACEHOLDER} (begin to approval, or now; nights included)"
        )
        stages = ", ".join(
            f"{name.replace('_', ' ')} {format_duration(value) or PLACEHOLDER}"
            for name, value in fields["stage_durations"].items()
        )
        lines.append(f"STAGE_DURATIONS:   {stages}")
        lines.extend(_history_lines(fields))
        after = fields["after_approval"]
        if after and after["ai_interactions"]:
            lines.append(
                f"AFTER_APPROVAL:    {after['ai_interactions']} AI calls, {after['token_count_used'] or 0:,} tokens after FINAL_APPROVAL"
            )
    if "variance_tasks" in fields:
        lines.append(f"VARIANCE_OVER:     {', '.join(fields['variance_tasks']) or 'no approved task with an estimate yet'}")
        for task in fields["open_tasks_so_far"]:
            lines.append(
                f"OPEN_SO_FAR:       {task['task_id']} {format_duration(task['actual_duration']) or PLACEHOLDER} working time"
                f" against {format_duration(task['estimated_duration']) or 'no estimate'}"
            )
    if "context_switches_total" in fields:
        lines.append(f"CONTEXT_SWITCHES:  {fields['context_switches_total']} ({CONTEXT_SWITCHES_NOTE})")
    return lines


def _history_lines(fields: Mapping[str, Any]) -> list[str]:
    """A re-estimated task's latest estimate (ESTIMATED_DURATION is its first), and a
    reopened task's approvals."""
    lines = []
    if fields["estimate_latest"] is not None and fields["estimate_latest"] != fields["estimated_duration"]:
        steps = " -> ".join(format_duration(e["estimate_seconds"]) or "unset" for e in fields["estimates"])
        lines.append(f"ESTIMATE_LATEST:   {_hours(fields['estimate_latest'])} (estimates in order: {steps})")
    if any(approval["reopened_at"] for approval in fields["approvals"]):
        approvals = [
            f"{display(a['approved_at'])} " + (f"(reopened {display(a['reopened_at'])})" if a["reopened_at"] else "(in force)")
            for a in fields["approvals"]
        ]
        lines.append(f"APPROVALS:         {'; '.join(approvals)}")
    return lines


def _completeness_line(fields: "TaskReport | PhaseReport") -> str:
    completeness = fields["tracking_completeness"]
    line = f"Tracking completeness: {completeness['percent']:.0f}% ({completeness['filled']}/{completeness['total']} fields)"
    if completeness["missing"]:
        shown = completeness["missing"][:12]
        more = len(completeness["missing"]) - len(shown)
        line += "; missing: " + ", ".join(shown) + (f" and {more} more" if more else "")
    return line


def task_markdown(fields: "TaskReport", utc: bool = False) -> str:
    title = f" — {fields['title']}" if fields["title"] else ""
    lines = [
        f"### Task {fields['task_id']}{title}",
        "",
        "**Execution Log:**",
        "```",
        *_block(fields, TASK_SECTIONS, utc),
        "",
        *_beyond(fields),
        "```",
        "",
    ]
    lines.append(_completeness_line(fields))
    return "\n".join(lines) + "\n"


def _target_value(check: "TargetCheck") -> str:
    value = check["value"]
    if value is None:
        return NOT_MEASURED
    if check["reason"] == NOT_YET:
        return _measured(check) + " so far"
    return _measured(check)


def _measured(check: "TargetCheck") -> str:
    value = check["value"]
    if check["metric"] == "tracking_completeness":
        return f"{value:.0f}%"
    if check["metric"] == "iteration_efficiency":
        return f"{value:.2f}"
    if check["metric"] == "token_efficiency_improvement":
        return f"{value:+.1%}"
    return f"{value:.1%}" if check["metric"] == "projection_accuracy" else f"{value:.2%}"


def _verdict(check: "TargetCheck") -> str:
    if check["reason"] == NOT_YET:
        return "not yet"
    return {True: "✅", False: "❌", None: "—"}[check["passed"]]


def phase_markdown(fields: "PhaseReport", utc: bool = False) -> str:
    title = f" — {fields['title']}" if fields["title"] else ""
    lines = [
        f"## 📈 Phase {fields['phase_id']} Aggregate Tracking{title}",
        "",
        "```",
        *_block(fields, PHASE_SECTIONS, utc),
        "",
        *_beyond(fields),
        "```",
        "",
    ]
    lines += ["### Pattern effectiveness", "", "| Metric | Target | Measured | |", "|---|---|---|---|"]
    for check in fields["pattern_effectiveness"]:
        lines.append(f"| {check['name']} | {check['target']} | {_target_value(check)} | {_verdict(check)} |")
    lines += [
        "",
        "### Tasks",
        "",
        "| Task | Status | Duration | Estimate | Iterations | Tokens | Interactions | Hallucinations | Cost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task in fields["tasks"]:
        lines.append(
            f"| {task['task_id']} | {task['status']} | {format_duration(task['actual_duration']) or PLACEHOLDER} "
            f"| {format_duration(task['estimated_duration']) or PLACEHOLDER} | {task['iterations_count']} "
            f"| {f'{task["token_count_used"]:,}' if task['token_count_used'] is not None else PLACEHOLDER} | {task['ai_interactions']} "
            f"| {task['hallucination_count']} | {usd(task['cost_usd']) if task['cost_usd'] is not None else PLACEHOLDER} |"
        )
    lines += ["", _completeness_line(fields)]
    return "\n".join(lines) + "\n"


def task_text(fields: "TaskReport", utc: bool = False) -> str:
    """The terminal view: the execution log without markdown fences."""
    title = f" — {fields['title']}" if fields["title"] else ""
    lines = [
        f"Task {fields['task_id']}{title}  [phase {fields['phase_id']}, {fields['status']}]",
        *_block(fields, TASK_SECTIONS, utc),
        "",
        *_beyond(fields),
        "",
        _completeness_line(fields),
    ]
    return "\n".join(lines) + "\n"


def phase_text(fields: "PhaseReport", utc: bool = False) -> str:
    title = f" — {fields['title']}" if fields["title"] else ""
    lines = [
        f"Phase {fields['phase_id']}{title}",
        *_block(fields, PHASE_SECTIONS, utc),
        "",
        *_beyond(fields),
        "",
        "=== PATTERN EFFECTIVENESS ===",
    ]
    for check in fields["pattern_effectiveness"]:
        lines.append(f"{check['name'] + ':':<30}{_target_value(check):<14} target {check['target']:<40} {_verdict(check)}")
    lines += ["", _completeness_line(fields)]
    return "\n".join(lines) + "\n"


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        flat = {}
        for key, child in value.items():
            flat.update(_flatten(child, f"{prefix}{key}."))
        return flat
    if isinstance(value, list):
        return {prefix[:-1]: json.dumps(value, ensure_ascii=False)}
    return {prefix[:-1]: value}


def as_csv(rows: list[dict]) -> str:
    """A header of (dotted) field names, then one line per report row."""
    import csv  # only for CSV: the table and Markdown reports start without it

    flat = [_flatten(row) for row in rows]
    columns = list(dict.fromkeys(key for row in flat for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    return out.getvalue()


def overview_markdown(report: "OverviewReport") -> str:
    lines = [
        "| Phase | Tasks | Tokens | Tokens/task | Trend | Interactions | Hallucination rate | Cost | From agent logs | Completeness |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in overview_rows(report):
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _share(value: float | None) -> str:
    """The share of tokens imported from the agents' logs: none reads as 0%, never as a blank."""
    return f"{value or 0:.1%}"


def overview_rows(report: "OverviewReport") -> list[list[str]]:
    rows = []
    for phase in report["phases"]:
        trend = phase["token_efficiency_change"]
        rows.append(
            [
                phase["phase_id"] + (f" {phase['title']}" if phase["title"] else ""),
                f"{phase['tasks_completed']}/{phase['tasks_total']} done",
                f"{phase['total_tokens_used']:,}" if phase["total_tokens_used"] is not None else PLACEHOLDER,
                f"{phase['tokens_per_task_avg']:,.0f}" if phase["tokens_per_task_avg"] is not None else PLACEHOLDER,
                f"{trend:+.1%}" if trend is not None else "—",
                str(phase["ai_interactions_total"]),
                f"{phase['hallucination_rate']:.2%}" if phase["hallucination_rate"] is not None else PLACEHOLDER,
                usd(phase["cost_usd"]) if phase["cost_usd"] is not None else PLACEHOLDER,
                _share(phase["agent_log_share"]),
                f"{phase['tracking_completeness']:.0f}%",
            ]
        )
    unassigned = report["unassigned"]
    tokens = unassigned["tokens"]["total"]
    rows.append(
        [
            "unassigned",
            "—",
            f"{tokens:,}" if tokens is not None else "0",
            "—",
            "—",
            str(unassigned["ai_interactions"]),
            "—",
            usd(unassigned["cost_usd"]) if unassigned["cost_usd"] is not None else "—",
            _share(unassigned["agent_log_share"]),
            "—",
        ]
    )
    return rows


# A usage line's figures: (heading, key) in the order every format shows them.
USAGE_FIGURES = [
    ("Calls", "ai_interactions"),
    ("Failed", "failed_calls"),
    ("Input", "input_total"),
    ("Cache read", "cache_read"),
    ("Cache write", "cache_write"),
    ("Output", "output_total"),
    ("Reasoning", "reasoning"),
    ("Total tokens", "total_tokens"),
    ("Cost", "cost_usd"),
    ("Unpriced", "unpriced_interactions"),
    ("Flags", "hallucination_count"),
]
LATENCY_FIGURES = [
    ("First token p50", "first_token_p50_seconds"),
    ("First token p95", "first_token_p95_seconds"),
    ("Total p50", "total_p50_seconds"),
    ("Total p95", "total_p95_seconds"),
]


def _usage_figures(stats: "UsageStats") -> dict:
    tokens = stats["tokens"]
    return {
        "ai_interactions": stats["ai_interactions"],
        "failed_calls": stats["failed_calls"],
        **{key: tokens[key] for key in ("input_total", "cache_read", "cache_write", "output_total", "reasoning")},
        "total_tokens": tokens["total"],
        "cost_usd": None if stats["cost_usd"] is None else round(stats["cost_usd"], 6),  # no float noise in a sum
        "unpriced_interactions": stats["unpriced_interactions"],
        "hallucination_count": stats["hallucination_count"],
    }


def usage_lines(report: "UsageReport") -> list[dict]:
    """Every line of a usage report whole, as CSV and Markdown give it: per period its
    line (model `all`) then its models' lines, or a line per model with its latency;
    then the totals (period `total`)."""
    lines: list[dict] = []
    if "models" in report:
        for model in report["models"]:
            latency = model.get("latency")
            figures = {key: latency[key] if latency else None for _, key in LATENCY_FIGURES}  # type: ignore[literal-required]
            lines.append({"model": model["model"], **_usage_figures(model), **figures})
        lines.append({"model": "total", **_usage_figures(report["totals"])})
        return lines
    for period in report.get("periods", []):
        # An hour's UTC start beside its label: a spreadsheet sorts and joins by it.
        when = {"period": period["period"], **({"start": period["start"]} if "start" in period else {})}
        lines.append({**when, "model": "all", **_usage_figures(period)})
        lines += [{**when, "model": model["model"], **_usage_figures(model)} for model in period["models"]]
    lines.append({"period": "total", "model": "all", **_usage_figures(report["totals"])})
    return lines


def _figure(key: str, value) -> str:
    if value is None:
        return "—"
    if key == "cost_usd":
        return usd(value)
    if key.endswith("_seconds"):
        return f"{value:.2f} s"
    return f"{value:,}" if isinstance(value, int) else str(value)


def usage_markdown(report: "UsageReport", label: str) -> str:
    """A usage report as a Markdown table, a line per usage_lines line."""
    lines = usage_lines(report)
    keys = [key for key in lines[0] if key not in ("start", "unpriced_interactions")] if lines else []  # the label reads
    headings = {
        "period": label,
        "start": "Start (UTC)",
        "model": "Model",
        **{key: heading for heading, key in USAGE_FIGURES + LATENCY_FIGURES},
    }
    table = ["| " + " | ".join(headings[key] for key in keys) + " |", "|" + "---|" * len(keys)]
    for line in lines:
        table.append("| " + " | ".join(_figure(key, line.get(key)) for key in keys) + " |")
    unpriced = report["totals"]["unpriced_interactions"]
    note = f"\n{unpriced} of these calls have no known price: they are not in the cost.\n" if unpriced else ""
    return "\n".join(table) + "\n" + note


def session_lines(report: "SessionsReport") -> list[dict]:
    """A line per agent session, for CSV and Markdown; then the totals (session `total`)."""
    lines = []
    for session in report["sessions"]:
        lines.append(
            {
                "session_id": session["session_id"],
                "agent": session["agent"],
                "client": session["client"],
                "task_ids": " ".join(task or "unassigned" for task in session["task_ids"]),
                "first_call_at": session["first_call_at"],
                "last_call_at": session["last_call_at"],
                "duration_seconds": session["duration_seconds"],
                **_usage_figures(session),
                "models": " ".join(session["models"]),
            }
        )
    lines.append({"session_id": "total", **_usage_figures(report["totals"])})
    return lines


def block_lines(report: "BlocksReport") -> list[dict]:
    """A line per block (and gap), for CSV and Markdown."""
    lines = []
    for block in report["blocks"]:
        burn, projected = block["burn_rate"], block["projected"]
        lines.append(
            {
                "start": block["start"],
                "end": block["end"],
                "state": "gap" if block["gap"] else "active" if block["active"] else "done",
                "time_left_seconds": None if block["time_left_seconds"] is None else round(block["time_left_seconds"]),
                "ai_interactions": block["ai_interactions"],
                "failed_calls": block["failed_calls"],
                "total_tokens": block["tokens"]["total"],
                "cost_usd": None if block["cost_usd"] is None else round(block["cost_usd"], 6),
                "tokens_per_minute": None if burn is None else round(burn["tokens_per_minute"], 1),
                "cost_per_hour_usd": None if burn is None else round(burn["cost_per_hour_usd"], 6),
                "projected_tokens": None if projected is None else projected["tokens"],
                "projected_cost_usd": None if projected is None else round(projected["cost_usd"], 6),
                "models": " ".join(block["models"]),
            }
        )
    return lines


_HEADINGS = {
    "period": "Period",
    "model": "Model",
    "session_id": "Session",
    "agent": "Agent",
    "client": "Client",
    "task_ids": "Tasks",
    "first_call_at": "First call",
    "last_call_at": "Last call",
    "duration_seconds": "Span",
    "models": "Models",
    "start": "Start",
    "end": "End",
    "state": "State",
    "time_left_seconds": "Time left",
    "tokens_per_minute": "Tokens/min",
    "cost_per_hour_usd": "Cost/hour",
    "projected_tokens": "Projected tokens",
    "projected_cost_usd": "Projected cost",
    **{key: heading for heading, key in USAGE_FIGURES + LATENCY_FIGURES},
}


def lines_markdown(lines: list[dict], title: str, utc: bool = False) -> str:
    """Report lines (session_lines, block_lines) as a Markdown table under a heading."""
    keys = list(dict.fromkeys(key for line in lines for key in line))
    table = [f"## {title}", "", "| " + " | ".join(_HEADINGS.get(key, key) for key in keys) + " |", "|" + "---|" * len(keys)]
    for line in lines:
        table.append("| " + " | ".join(_cell(key, line.get(key), utc) for key in keys) + " |")
    return "\n".join(table) + "\n"


def _cell(key: str, value, utc: bool) -> str:
    if value is None:
        return "—"
    if key.endswith("_at") or key in ("start", "end"):
        return display(value, utc)
    if key in ("duration_seconds", "time_left_seconds"):
        return format_duration(value) or "0s"
    if key.endswith("_usd"):
        return usd(value)
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value).replace("|", "\\|")
