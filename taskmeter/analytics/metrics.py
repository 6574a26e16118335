"""The seed's Level 1 and Level 2 fields, computed from histories. Pure functions:
no database, no clock (the caller passes `now`).

Every field is named as in the seed, in snake_case. A field with no data is None
and is listed under tracking_completeness.missing; nothing is zero-filled.
Durations are seconds; ratios are plain numbers (0.9, not 90%).
"""

from collections.abc import Mapping, Sequence

from taskmeter.analytics import worktime
from taskmeter.analytics.history import PhaseHistory, TaskHistory, missing_when_unstated
from taskmeter.store.tasks import phase_milestones
from taskmeter.timefmt import from_stored, seconds_between
from taskmeter.tokens import AGENT_LOG, ESTIMATED, PARTIAL, REPORTED, SOURCE_COLUMNS, tokens_object, total_tokens

TYPE_CHECKING = False
if TYPE_CHECKING:  # the report types are for the type checker: the status line reads this module
    from taskmeter.analytics.records import (
        Approval,
        Completeness,
        OverviewLine,
        OverviewReport,
        PhaseFields,
        PhaseReport,
        StageDurations,
        TargetCheck,
        TaskFields,
        TaskReport,
        UsageExtras,
    )

# The seed's Level 1 template, section by section (snake_case of its field names).
TASK_SECTIONS = {
    "TIMESTAMPS (ISO 8601 Format)": [
        "begin_timestamp",
        "initial_completion_timestamp",
        "tests_completion_timestamp",
        "validation_timestamp",
        "final_approval_timestamp",
    ],
    "DURATION ANALYSIS": ["estimated_duration", "actual_duration", "variance", "efficiency_ratio"],
    "QUALITY METRICS": [
        "iterations_count",
        "test_coverage_target",
        "test_coverage_actual",
        "performance_target",
        "performance_actual",
        "doc_completeness",
    ],
    "TOKEN EFFICIENCY": ["token_count_used", "ai_interactions", "hallucination_count", "context_switches"],
    "OUTCOME TRACKING": [
        "projected_outcome",
        "actual_outcome",
        "success_criteria",
        "blockers_encountered",
        "lessons_learned",
    ],
}

# The seed's Level 2 template.
PHASE_SECTIONS = {
    "PHASE-LEVEL TIMESTAMPS": [
        "phase_begin",
        "phase_first_code",
        "phase_tests_passing",
        "phase_integration_complete",
        "phase_documentation_complete",
        "phase_final_approval",
    ],
    "PHASE DURATION ANALYSIS": ["estimated_total", "actual_total", "variance", "efficiency_ratio", "parallel_efficiency"],
    "PHASE QUALITY METRICS": [
        "tasks_total",
        "tasks_completed",
        "tasks_failed_first_attempt",
        "average_iterations_per_task",
        "test_coverage_overall",
        "performance_targets_met",
    ],
    "PHASE TOKEN EFFICIENCY": [
        "total_tokens_used",
        "tokens_per_task_avg",
        "ai_interactions_total",
        "hallucination_count_total",
        "hallucination_rate",
    ],
    "PHASE OUTCOME ANALYSIS": [
        "projected_deliverables",
        "deliverables_completed",
        "critical_blockers",
        "patterns_extracted",
        "technical_debt_incurred",
    ],
    "META-LEARNING": ["theory_accuracy", "biggest_surprise", "biggest_win", "biggest_challenge", "theory_improvements"],
}

# The seed's "Metrics" table: how to tell the pattern is working.
TARGETS = [
    ("tracking_completeness", "Tracking completeness", "100% of fields filled"),
    ("projection_accuracy", "Projection accuracy", "> 80%"),
    ("iteration_efficiency", "Iteration efficiency", "< 1.2 avg iterations/task"),
    ("hallucination_rate", "Hallucination rate", "< 1%"),
    ("token_efficiency_improvement", "Token efficiency improvement", "-10% tokens per task vs previous phase"),
]


def _ratio(numerator, denominator) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _agent_log_share(usage: dict) -> float | None:
    """The share of the tokens imported from the agents' logs: calls the meter never saw."""
    return _ratio(usage[SOURCE_COLUMNS[AGENT_LOG]], total_tokens(usage))


def _usage_extras(usage: dict) -> "UsageExtras":
    return {
        "tokens": tokens_object(usage),
        "tokens_by_source": {
            "reported": usage[SOURCE_COLUMNS[REPORTED]],
            "estimated": usage[SOURCE_COLUMNS[ESTIMATED]],
            "partial": usage[SOURCE_COLUMNS[PARTIAL]],
            "agent_log": usage[SOURCE_COLUMNS[AGENT_LOG]],
        },
        "agent_log_share": _agent_log_share(usage),
        "cost_usd": usage["cost_usd"],
        # The part of cost_usd a subscription login paid for: its API-equivalent price.
        "cost_api_equivalent_usd": usage["api_equivalent_usd"] if usage["cost_usd"] is not None else None,
        "unpriced_interactions": usage["interactions"] - usage["cost_calls"],
        # Calls that got no model answer (no response, HTTP 4xx or 5xx): not AI interactions.
        "failed_calls": usage["failed_calls"],
        "cache_hit_ratio": _ratio(usage["cache_read"], usage["cache_read_input"]),
        "reasoning_share": _ratio(usage["reasoning"], usage["reasoning_output"]),
    }


def _end_of(task: dict, now: str) -> str:
    return task["final_approval_at"] or now


def first_estimate(in_force: int | None, estimates: Sequence[tuple[str, int | None]]) -> int | None:
    """ESTIMATED_DURATION: the task's first estimate (`estimates`, its history), what was
    projected, however often it was re-estimated since; none while its estimate is unset."""
    if in_force is None:
        return None
    # The estimate in force stands in where no history was kept (a table rebuilt without m018's triggers).
    return next((seconds for _, seconds in estimates if seconds is not None), in_force)


def _seconds(stored: str) -> float:
    return from_stored(stored).timestamp()


def task_spans(history: TaskHistory, now: str, idle_seconds: float) -> list[worktime.Span]:
    """The task's working spans (analytics/worktime.py), within its wall time: begin to approval, or now."""
    return spans_of(history.task, history.current, history.activity, history.events, now, idle_seconds)


def spans_of(
    task: dict, current: Sequence, activity: Sequence, events: Sequence, now: str, idle_seconds: float
) -> list[worktime.Span]:
    """task_spans from a task's row and TaskHistory's working-time fields (history.working_inputs)."""
    if task["begin_at"] is None:
        return []
    begin, end = _seconds(task["begin_at"]), _seconds(_end_of(task, now))
    # A task still current is current until its approval, or now.
    current_spans = [(a, b if b is not None and b < end else end) for a, b in current if a <= end]
    return worktime.working_spans(current_spans, [*activity, *((at, at) for at in events)], idle_seconds, (begin, end))


def settled_since(history: TaskHistory, now: str) -> str | None:
    """From when the task's working time, as task_spans gives it at `now`, is the same at every
    later now while nothing it is made of changes (store/settled.py keeps it): always ("") once
    approved, its window ending at the approval; from `now` on for an open task no longer current
    that has nothing later than now. None while it is current (it counts up to now) or has not begun."""
    task = history.task
    if task["begin_at"] is None:
        return None
    if task["final_approval_at"]:
        return ""
    closed = [until for _, until in history.current if until is not None]
    if len(closed) < len(history.current):
        return None
    latest = max([_seconds(task["begin_at"]), *closed, *(end for _, end in history.activity), *history.events])
    return now if latest <= _seconds(now) else None


def _stages(task: dict) -> "StageDurations":
    def between(a: str, b: str) -> float | None:
        return seconds_between(task[a], task[b]) if task[a] and task[b] else None

    return {
        "begin_to_initial": between("begin_at", "initial_completion_at"),
        "initial_to_tests": between("initial_completion_at", "tests_completion_at"),
        "tests_to_validation": between("tests_completion_at", "validation_at"),
        "validation_to_approval": between("validation_at", "final_approval_at"),
    }


def task_fields(
    history: TaskHistory,
    now: str,
    idle_seconds: float = worktime.DEFAULT_IDLE_SECONDS,
    spans: list | None = None,
    working_seconds: float | None = None,
) -> "TaskReport":
    """`spans`: the task's working spans when the caller has them already; `working_seconds`:
    its working time, when the caller has that (a settled one, store/settled.py)."""
    task, usage = history.task, history.usage
    wall = seconds_between(task["begin_at"], _end_of(task, now)) if task["begin_at"] else None
    if working_seconds is not None:
        actual: float | None = working_seconds
    else:
        if spans is None:
            spans = task_spans(history, now, idle_seconds)
        actual = worktime.total(spans) if task["begin_at"] else None
    estimate = first_estimate(history.task["estimate_seconds"], history.estimates)
    tokens = total_tokens(usage)
    # Every approval, oldest first: those `meter task --reopen` withdrew, then the one in force.
    approvals: list[Approval] = [{"approved_at": a, "reopened_at": r} for a, r in history.withdrawn_approvals]
    if task["final_approval_at"]:
        approvals.append({"approved_at": task["final_approval_at"], "reopened_at": None})
    fields: TaskFields = {
        "task_id": task["id"],
        "title": task["title"],
        "phase_id": task["phase_id"],
        "tag": task["tag"],
        "status": "approved" if task["final_approval_at"] else "open",
        # Until approval, VARIANCE, EFFICIENCY_RATIO and ITERATIONS_COUNT are figures so far, not a verdict.
        "verdict": "final" if task["final_approval_at"] else "open",
        "begin_timestamp": task["begin_at"],
        "initial_completion_timestamp": task["initial_completion_at"],
        "tests_completion_timestamp": task["tests_completion_at"],
        "validation_timestamp": task["validation_at"],
        "final_approval_timestamp": task["final_approval_at"],
        "approvals": approvals,
        "estimated_duration": estimate,
        "estimate_latest": task["estimate_seconds"],
        "estimates": [{"set_at": at, "estimate_seconds": seconds} for at, seconds in history.estimates],
        "actual_duration": actual,
        "actual_duration_is_elapsed_so_far": actual is not None and task["final_approval_at"] is None,
        "variance": actual - estimate if actual is not None and estimate else None,
        "efficiency_ratio": _ratio(actual, estimate),
        "iterations_count": history.iterations,
        "test_coverage_target": task["coverage_target"],
        "test_coverage_actual": task["coverage_actual"],
        "performance_target": task["performance_target"],
        "performance_actual": task["performance_actual"],
        "performance_met": None if task["performance_met"] is None else bool(task["performance_met"]),
        "doc_completeness": task["doc_completeness"],
        "token_count_used": tokens,
        "ai_interactions": usage["interactions"],
        "hallucination_count": usage["flagged"],
        "hallucination_rate": _ratio(usage["flagged"], usage["interactions"]),
        "context_switches": usage["context_switches"],
        "projected_outcome": task["projected_outcome"],
        "actual_outcome": task["actual_outcome"],
        "projection_met": None if task["projection_met"] is None else bool(task["projection_met"]),
        "success_criteria": task["success"],
        "blockers_encountered": task["blockers"],
        "lessons_learned": task["lessons"],
        **_usage_extras(usage),
        "rework_tokens": history.rework_tokens,
        "rework_cost_usd": history.rework_cost_usd,
        "rework_interactions": history.rework_calls,
        "wall_duration": wall,
        "stage_durations": _stages(task),
        "after_approval": {"ai_interactions": history.after_approval[0], "token_count_used": history.after_approval[1]}
        if task["final_approval_at"]
        else None,
    }
    return {**fields, "tracking_completeness": completeness(fields, TASK_SECTIONS)}


def completeness(fields: Mapping[str, object], sections: dict[str, list[str]], prefix: str = "") -> "Completeness":
    names = [name for section in sections.values() for name in section]
    missing = [prefix + name.upper() for name in names if fields.get(name) is None]
    return {
        "percent": 100.0 * (len(names) - len(missing)) / len(names),
        "filled": len(names) - len(missing),
        "total": len(names),
        "missing": missing,
    }


def sum_usage(usages: list[dict], columns: list[str]) -> dict:
    total = {key: sum(usage[key] or 0 for usage in usages) for key in columns}
    return missing_when_unstated(total)


def tokens_per_task(usage: dict, tasks: int) -> float | None:
    """TOKENS_PER_TASK_AVG of a phase, from the sum of its approved tasks' rollups:
    an open task's tokens so far would pull the average down."""
    return _ratio(total_tokens(usage), tasks)


def token_change(per_task: float | None, previous_per_task: float | None) -> float | None:
    """TOKEN_EFFICIENCY_CHANGE: tokens per task against the phase before (the seed wants -10% or less)."""
    return _ratio(per_task - previous_per_task, previous_per_task) if per_task is not None and previous_per_task else None


def phase_fields(
    history: PhaseHistory,
    now: str,
    previous_tokens_per_task: float | None = None,
    idle_seconds: float = worktime.DEFAULT_IDLE_SECONDS,
) -> "PhaseReport":
    phase = history.phase
    spans = [task_spans(t, now, idle_seconds) for t in history.tasks]
    tasks = [task_fields(t, now, idle_seconds, task_spans_) for t, task_spans_ in zip(history.tasks, spans, strict=True)]
    usage = sum_usage([t.usage for t in history.tasks], history.usage_columns)
    begins = [t["begin_timestamp"] for t in tasks if t["begin_timestamp"]]
    ends = [t["final_approval_timestamp"] or now for t in tasks if t["begin_timestamp"]]
    estimates = [t["estimated_duration"] for t in tasks if t["estimated_duration"] is not None]
    estimated_total = sum(estimates) if tasks and len(estimates) == len(tasks) else None
    # The phase's working time: the union of its tasks' working spans (overlaps count once).
    every_span = [span for task_spans_ in spans for span in task_spans_]
    actual_total = worktime.total(every_span) if begins else None
    summed = sum(t["actual_duration"] for t in tasks if t["actual_duration"] is not None)
    # Variance and efficiency compare finished work with its estimate; open tasks are apart, "so far".
    done = [t for t in tasks if t["status"] == "approved" and t["estimated_duration"] and t["actual_duration"] is not None]
    done_actual = sum(t["actual_duration"] for t in done if t["actual_duration"] is not None)
    done_estimate = sum(t["estimated_duration"] for t in done if t["estimated_duration"] is not None)
    span = seconds_between(min(begins), max(ends)) if begins else None
    coverages = [t["test_coverage_actual"] for t in tasks if t["test_coverage_actual"] is not None]
    performance = [t["performance_met"] for t in tasks if t["performance_met"] is not None]
    projections = [t["projection_met"] for t in tasks if t["projection_met"] is not None]
    tokens = total_tokens(usage)
    # Averages over finished work only: an open task's tokens and iterations are figures so far.
    approved = [t for t in tasks if t["status"] == "approved"]
    approved_usage = [h.usage for h, t in zip(history.tasks, tasks, strict=True) if t["status"] == "approved"]
    per_task = tokens_per_task(sum_usage(approved_usage, history.usage_columns), len(approved))
    # An iteration recorded stays recorded: an open task that needed one has already failed its first attempt.
    failed_first = [t["task_id"] for t in tasks if t["iterations_count"] > 1]
    milestones = phase_milestones(phase, begins)
    fields: PhaseFields = {
        "phase_id": phase["id"],
        "title": phase["title"],
        # PHASE_BEGIN ... in the order of store.tasks.PHASE_MILESTONES, as `meter phase --mark` checks them.
        "phase_begin": milestones["begin"],
        "phase_first_code": milestones["first-code"],
        "phase_tests_passing": milestones["tests-passing"],
        "phase_integration_complete": milestones["integration"],
        "phase_documentation_complete": milestones["docs"],
        "phase_final_approval": milestones["approved"],
        "estimated_total": estimated_total,
        "tasks_without_estimate": [t["task_id"] for t in tasks if t["estimated_duration"] is None],
        "actual_total": actual_total,
        "variance": done_actual - done_estimate if done else None,
        "efficiency_ratio": _ratio(done_actual, done_estimate) if done else None,
        "variance_tasks": [t["task_id"] for t in done],
        "open_tasks_so_far": [
            {"task_id": t["task_id"], "actual_duration": t["actual_duration"], "estimated_duration": t["estimated_duration"]}
            for t in tasks
            if t["status"] != "approved"
        ],
        # The seed's time saved by parallel work: one person working serially scores 0.
        "parallel_efficiency": summed - actual_total if actual_total is not None else None,
        "wall_clock_span": span,
        "tasks_total": len(tasks),
        "tasks_completed": len(approved),
        "tasks_failed_first_attempt": len(failed_first),
        "tasks_reworked": failed_first,
        "average_iterations_per_task": _ratio(sum(t["iterations_count"] for t in approved), len(approved)),
        "test_coverage_overall": sum(coverages) / len(coverages) if coverages else None,
        "performance_targets_met": f"{sum(performance)} / {len(performance)}" if performance else None,
        "performance_targets_met_count": sum(performance) if performance else None,
        "performance_targets_total": len(performance) if performance else None,
        "total_tokens_used": tokens,
        "tokens_per_task_avg": per_task,
        "ai_interactions_total": usage["interactions"],
        "hallucination_count_total": usage["flagged"],
        "hallucination_rate": _ratio(usage["flagged"], usage["interactions"]),
        "context_switches_total": usage["context_switches"],
        "projected_deliverables": phase["projected_deliverables"],
        "deliverables_completed": phase["deliverables_completed"],
        "critical_blockers": phase["critical_blockers"],
        "patterns_extracted": phase["patterns_extracted"],
        "technical_debt_incurred": phase["technical_debt"],
        "theory_accuracy": _ratio(sum(projections), len(projections)) if projections else None,
        "projections_materialized": sum(projections) if projections else None,
        "projections_total": len(projections) if projections else None,
        "biggest_surprise": phase["biggest_surprise"],
        "biggest_win": phase["biggest_win"],
        "biggest_challenge": phase["biggest_challenge"],
        "theory_improvements": phase["theory_improvements"],
        **_usage_extras(usage),
        "rework_tokens": sum(t["rework_tokens"] for t in tasks if t["rework_tokens"] is not None)
        if any(t["rework_tokens"] is not None for t in tasks)
        else None,
        "token_efficiency_change": token_change(per_task, previous_tokens_per_task),
        "tasks": tasks,
    }
    own = completeness(fields, PHASE_SECTIONS)
    missing = own["missing"] + [f"{t['task_id']}: {name}" for t in tasks for name in t["tracking_completeness"]["missing"]]
    filled = own["filled"] + sum(t["tracking_completeness"]["filled"] for t in tasks)
    total = own["total"] + sum(t["tracking_completeness"]["total"] for t in tasks)
    tracking: Completeness = {"percent": 100.0 * filled / total, "filled": filled, "total": total, "missing": missing}
    report: PhaseReport = {**fields, "tracking_completeness": tracking, "pattern_effectiveness": []}
    report["pattern_effectiveness"] = pattern_effectiveness(report)
    return report


NOT_YET = "no approved task yet"  # a phase's targets judge finished work only
NOT_MEASURED = "not measured"


def pattern_effectiveness(fields: "PhaseReport") -> list["TargetCheck"]:
    """The seed's targets, each passed, failed, or neither (`passed` None) with the `reason`."""
    values = {
        "tracking_completeness": fields["tracking_completeness"]["percent"],
        "projection_accuracy": fields["theory_accuracy"],
        "iteration_efficiency": fields["average_iterations_per_task"],
        "hallucination_rate": fields["hallucination_rate"],
        "token_efficiency_improvement": fields["token_efficiency_change"],
    }
    checks = {
        "tracking_completeness": lambda v: v >= 100.0,
        "projection_accuracy": lambda v: v > 0.80,
        "iteration_efficiency": lambda v: v < 1.2,
        "hallucination_rate": lambda v: v < 0.01,
        "token_efficiency_improvement": lambda v: v <= -0.10,
    }
    judged: list[TargetCheck] = []
    for key, name, target in TARGETS:
        reason = NOT_YET if not fields["tasks_completed"] else NOT_MEASURED if values[key] is None else None
        passed = checks[key](values[key]) if reason is None else None
        judged.append({"metric": key, "name": name, "target": target, "value": values[key], "passed": passed, "reason": reason})
    return judged


def _overview_line(fields: "PhaseReport") -> "OverviewLine":
    return {
        "phase_id": fields["phase_id"],
        "title": fields["title"],
        "tasks_total": fields["tasks_total"],
        "tasks_completed": fields["tasks_completed"],
        "total_tokens_used": fields["total_tokens_used"],
        "tokens_per_task_avg": fields["tokens_per_task_avg"],
        "token_efficiency_change": fields["token_efficiency_change"],
        "ai_interactions_total": fields["ai_interactions_total"],
        "hallucination_rate": fields["hallucination_rate"],
        "cost_usd": fields["cost_usd"],
        "agent_log_share": fields["agent_log_share"],
        "tracking_completeness": fields["tracking_completeness"]["percent"],
    }


def overview(phases: list["PhaseReport"], unassigned: dict) -> "OverviewReport":
    """One line per phase (fields from phase_fields) with the phase-over-phase
    token trend, and the calls attributed to no task."""
    rows = [_overview_line(fields) for fields in phases]
    return {
        "phases": rows,
        "unassigned": {
            "ai_interactions": unassigned["interactions"],
            "tokens": tokens_object(unassigned),
            "cost_usd": unassigned["cost_usd"],
            "agent_log_share": _agent_log_share(unassigned),
        },
    }
