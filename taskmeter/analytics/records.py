"""The shapes of the reports: the task, phase, overview, usage and status
reports as `--json` prints them, key for key and in that order. Building and
reading code is typed with them; tests/test_records.py checks each report's keys
against its type, so the two cannot drift apart. Standard library only.

Durations are seconds, ratios plain numbers; a field with no data is None.
"""

from typing import NotRequired, TypedDict


class Tokens(TypedDict):
    """The tokens object (taskmeter/tokens.py tokens_object): None where no call stated the count."""

    input_total: int | None
    cache_read: int | None
    cache_write: int | None
    output_total: int | None
    reasoning: int | None
    total: int | None


class TokensBySource(TypedDict):
    reported: int
    estimated: int
    partial: int
    agent_log: int  # imported by `meter reconcile --import`: the meter never saw them


class UsageExtras(TypedDict):
    """What a task and a phase report both say about their calls (metrics._usage_extras).
    TaskFields and PhaseFields spell these keys again where `--json` prints them: a
    TypedDict's inherited keys come first, and the key order is part of the output."""

    tokens: Tokens
    tokens_by_source: TokensBySource
    agent_log_share: float | None
    cost_usd: float | None
    cost_api_equivalent_usd: float | None
    unpriced_interactions: int
    failed_calls: int
    cache_hit_ratio: float | None
    reasoning_share: float | None


class Completeness(TypedDict):
    percent: float
    filled: int
    total: int
    missing: list[str]  # the fields with no data, as the seed names them: `VARIANCE`, `P1-001: ...`


class Approval(TypedDict):
    approved_at: str
    reopened_at: str | None  # withdrawn by `meter task --reopen` then


class Estimate(TypedDict):
    set_at: str
    estimate_seconds: int | None  # None: unset


class StageDurations(TypedDict):
    begin_to_initial: float | None
    initial_to_tests: float | None
    tests_to_validation: float | None
    validation_to_approval: float | None


class AfterApproval(TypedDict):
    ai_interactions: int
    token_count_used: int | None


class TaskFields(TypedDict):
    """A task's Level 1 fields as metrics.task_fields computes them, before its tracking completeness."""

    task_id: str
    title: str | None
    phase_id: str | None
    tag: str | None  # its forecasts' reference class (`meter task ID --tag api`)
    status: str  # approved or open
    verdict: str  # final or open: until approval, the figures are so far
    begin_timestamp: str | None
    initial_completion_timestamp: str | None
    tests_completion_timestamp: str | None
    validation_timestamp: str | None
    final_approval_timestamp: str | None
    approvals: list[Approval]
    estimated_duration: int | None
    estimate_latest: int | None
    estimates: list[Estimate]
    actual_duration: float | None
    actual_duration_is_elapsed_so_far: bool
    variance: float | None
    efficiency_ratio: float | None
    iterations_count: int
    test_coverage_target: float | None
    test_coverage_actual: float | None
    performance_target: str | None
    performance_actual: str | None
    performance_met: bool | None
    doc_completeness: float | None
    token_count_used: int | None
    ai_interactions: int
    hallucination_count: int
    hallucination_rate: float | None
    context_switches: int
    projected_outcome: str | None
    actual_outcome: str | None
    projection_met: bool | None
    success_criteria: str | None
    blockers_encountered: str | None
    lessons_learned: str | None
    tokens: Tokens
    tokens_by_source: TokensBySource
    agent_log_share: float | None
    cost_usd: float | None
    cost_api_equivalent_usd: float | None
    unpriced_interactions: int
    failed_calls: int
    cache_hit_ratio: float | None
    reasoning_share: float | None
    rework_tokens: int | None
    rework_cost_usd: float | None
    rework_interactions: int
    wall_duration: float | None
    stage_durations: StageDurations
    after_approval: AfterApproval | None  # None until approved


class TaskReport(TaskFields):
    """A task as a phase report lists it."""

    tracking_completeness: Completeness


class TaskRecord(TaskReport):
    """`meter report task`, `meter task` and `meter tasks --json`: with the intervals its working time adds up."""

    working_intervals: list[list[str]]  # [start, end] stored moments


class TaskListing(TaskRecord):
    """A task in `meter tasks --json`."""

    current: bool  # it is the current task


class TaskRow(TaskReport):
    """A task in `meter tasks`' table: its fields without the working intervals."""

    current: bool


class OpenTaskSoFar(TypedDict):
    task_id: str
    actual_duration: float | None
    estimated_duration: int | None


class TargetCheck(TypedDict):
    """One of the seed's targets: passed, failed, or neither (`passed` None) for the `reason`."""

    metric: str
    name: str
    target: str
    value: float | None
    passed: bool | None
    reason: str | None


class PhaseFields(TypedDict):
    """A phase's Level 2 fields as metrics.phase_fields computes them, before its tracking completeness."""

    phase_id: str
    title: str | None
    phase_begin: str | None
    phase_first_code: str | None
    phase_tests_passing: str | None
    phase_integration_complete: str | None
    phase_documentation_complete: str | None
    phase_final_approval: str | None
    estimated_total: int | None
    tasks_without_estimate: list[str]
    actual_total: float | None
    variance: float | None
    efficiency_ratio: float | None
    variance_tasks: list[str]
    open_tasks_so_far: list[OpenTaskSoFar]
    parallel_efficiency: float | None
    wall_clock_span: float | None
    tasks_total: int
    tasks_completed: int
    tasks_failed_first_attempt: int
    tasks_reworked: list[str]
    average_iterations_per_task: float | None
    test_coverage_overall: float | None
    performance_targets_met: str | None  # `1 / 2`
    performance_targets_met_count: int | None
    performance_targets_total: int | None
    total_tokens_used: int | None
    tokens_per_task_avg: float | None
    ai_interactions_total: int
    hallucination_count_total: int
    hallucination_rate: float | None
    context_switches_total: int
    projected_deliverables: str | None
    deliverables_completed: str | None
    critical_blockers: str | None
    patterns_extracted: str | None
    technical_debt_incurred: str | None
    theory_accuracy: float | None
    projections_materialized: int | None
    projections_total: int | None
    biggest_surprise: str | None
    biggest_win: str | None
    biggest_challenge: str | None
    theory_improvements: str | None
    tokens: Tokens
    tokens_by_source: TokensBySource
    agent_log_share: float | None
    cost_usd: float | None
    cost_api_equivalent_usd: float | None
    unpriced_interactions: int
    failed_calls: int
    cache_hit_ratio: float | None
    reasoning_share: float | None
    rework_tokens: int | None
    token_efficiency_change: float | None
    tasks: list[TaskReport]


class PhaseReport(PhaseFields):
    """Every phase in `meter phases --json`: its own fields and its tasks' count in its completeness."""

    tracking_completeness: Completeness
    pattern_effectiveness: list[TargetCheck]


class PhaseReportAlone(PhaseReport):
    """`meter report phase` and `meter phase --json`: one phase, and which came before it."""

    previous_phase_id: str | None


class OverviewLine(TypedDict):
    phase_id: str
    title: str | None
    tasks_total: int
    tasks_completed: int
    total_tokens_used: int | None
    tokens_per_task_avg: float | None
    token_efficiency_change: float | None
    ai_interactions_total: int
    hallucination_rate: float | None
    cost_usd: float | None
    agent_log_share: float | None
    tracking_completeness: float  # its percent


class UnassignedUsage(TypedDict):
    ai_interactions: int
    tokens: Tokens
    cost_usd: float | None
    agent_log_share: float | None


class OverviewReport(TypedDict):
    """`meter report overview`: a line per phase, and the calls of no task."""

    phases: list[OverviewLine]
    unassigned: UnassignedUsage


class UsageStats(TypedDict):
    ai_interactions: int
    failed_calls: int
    tokens: Tokens
    cost_usd: float | None
    unpriced_interactions: int
    hallucination_count: int


class ModelLatency(TypedDict):
    """Seconds from a call's start to the first byte of its answer (a stream's first
    token) and to its end, over the model's newest answered calls the meter timed:
    the nearest-rank p50 and p95 (analytics/periods.py model_latencies)."""

    timed_calls: int  # at most periods.LATENCY_SAMPLE
    first_token_p50_seconds: float | None
    first_token_p95_seconds: float | None
    total_p50_seconds: float | None
    total_p95_seconds: float | None


class ModelUsage(TypedDict):
    model: str  # `?` for calls that named none
    ai_interactions: int
    failed_calls: int
    tokens: Tokens
    cost_usd: float | None
    unpriced_interactions: int
    hallucination_count: int
    latency: NotRequired[ModelLatency]  # in `report models` alone


class PeriodUsage(TypedDict):
    period: str  # the hour (as a person reads it), day, week's Monday or month
    start: NotRequired[str]  # an hour's UTC start, as stored
    ai_interactions: int
    failed_calls: int
    tokens: Tokens
    cost_usd: float | None
    unpriced_interactions: int
    hallucination_count: int
    models: list[ModelUsage]


class UsageReport(TypedDict):
    """`meter report usage`: its rows per model (`models`) or per period (every other period)."""

    period: str
    since: str | None
    until: str | None
    task_id: str | None
    time_zone: str  # UTC or local
    totals: UsageStats
    models: NotRequired[list[ModelUsage]]
    periods: NotRequired[list[PeriodUsage]]


class SessionUsage(TypedDict):
    """An agent session in `meter report sessions` (analytics/windows.py)."""

    session_id: str  # as `meter log --session` takes it
    agent: str | None  # Claude Code, Codex or Gemini CLI
    client: str | None  # the program and version, from its User-Agent (taskmeter/clients.py)
    task_ids: list[str | None]  # in the order the session first called for each; None: unassigned
    first_call_at: str
    last_call_at: str
    duration_seconds: float  # first call to last
    ai_interactions: int
    failed_calls: int
    tokens: Tokens
    cost_usd: float | None
    unpriced_interactions: int
    hallucination_count: int
    models: list[str]


class SessionsReport(TypedDict):
    """`meter report sessions`."""

    since: str | None
    until: str | None
    task_id: str | None
    sessions: list[SessionUsage]
    totals: UsageStats


class BurnRate(TypedDict):
    tokens_per_minute: float
    cost_per_hour_usd: float


class Projection(TypedDict):
    """An active block's figures at its end, if it goes on at its burn rate."""

    tokens: int
    cost_usd: float


class UsageBlock(TypedDict):
    """A 5-hour block in `meter report blocks` (analytics/windows.py), or a gap between two."""

    start: str  # the first call's UTC hour; a gap's: 5 hours after the last call before it
    end: str
    first_call_at: str | None
    last_call_at: str | None
    gap: bool
    active: bool
    ai_interactions: int
    failed_calls: int
    tokens: Tokens
    cost_usd: float | None
    unpriced_interactions: int
    models: list[str]
    time_left_seconds: float | None  # the active block's
    burn_rate: BurnRate | None  # None: a single moment of calls, or a gap
    projected: Projection | None  # the active block's


class BlocksReport(TypedDict):
    """`meter report blocks`."""

    since: str | None
    until: str | None
    provider: str | None
    block_hours: int
    blocks: list[UsageBlock]


class StatusReport(TypedDict):
    """`meter status --json` where there is a database."""

    database: str
    database_exists: bool
    task_id: str | None
    current_since: str | None
    current_for_seconds: float | None
    current_note: str | None  # why the meter changed the current task: `P1-010 approved`
    task: TaskRecord | None
    proxies: list[dict]
    dashboard: str | None
    budget: dict | None  # analytics/budgets.py current_budget
    alerts: list[dict]
    last_interaction_at: str | None
    spooled_calls: int
    quarantined_calls: int
    quarantine: str
    pidfile: str | None  # set when `meter start` runs the proxy in the background
    log: str | None
    telemetry: dict | None  # the recorder's OpenTelemetry export: {"failing": {url: {since, cause}}, "dropped_calls"}
    service: dict  # the user service: installed, ok, detail, path (`meter service status`)
