"""The recorder's half of budgets and alerts: it works out, from the database,
what the proxy must know, and pushes that to the proxy whenever it changes
(checked every REFRESH_SECONDS, idle or busy, and worked out again only when
the database may have changed it), so the proxy's Guard addon
(proxy/refusals.py) decides each call with dictionary lookups and counters. While
a budget in block mode is set, it pushes after every batch stored: the budgets'
new spend and the IDs of the calls stored, which the proxy no longer counts as in
flight. It also raises the alerts: budget crossings, loops of near-identical
requests, burn rates far above the approved tasks' (docs/budgets.md), and open
tasks past the upper end of their forecast (docs/forecasts.md).
"""

import json
import logging
import subprocess
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence

from taskmeter.analytics import alerts as rules
from taskmeter.analytics import budgets, forecast, forecasts
from taskmeter.store import alerts, tasks
from taskmeter.store.calls import CallRow
from taskmeter.timefmt import from_stored

log = logging.getLogger(__name__)

REFRESH_SECONDS = 0.5
BURN_RATE_SECONDS = 60  # how often the current task's burn rate is judged
BASELINE_SECONDS = 600  # how often the approved tasks' rates are read again
MAX_SESSIONS = 1000  # sessions watched for loops before the quiet ones are forgotten


class LoopWatch:
    """Per session, the loop signatures of its recent calls: a signature seen
    `calls` times within `minutes` is a loop. Counts are kept as calls come and
    go, so each call costs the same however long the loop; a loop found starts
    its count afresh, so a loop that goes on is found again every `calls` calls."""

    def __init__(self, calls: int, minutes: float) -> None:
        self.calls = calls
        self.window = minutes * 60
        self._seen: dict[str, deque] = {}  # session -> (time, signature), oldest first
        self._counts: dict[str, Counter] = {}  # session -> signature -> calls in the window

    def observe(self, session: str, at: float, signatures: tuple[str, ...]) -> list[str]:
        """The signatures that this call (started at `at`, POSIX seconds) makes a loop."""
        if len(self._seen) > MAX_SESSIONS:
            self._forget_quiet(at)
        seen = self._seen.setdefault(session, deque())
        counts = self._counts.setdefault(session, Counter())
        while seen and seen[0][0] < at - self.window:
            counts[seen.popleft()[1]] -= 1
        found = []
        for signature in signatures:
            seen.append((at, signature))
            counts[signature] += 1
            if counts[signature] >= self.calls:
                found.append(signature)
        for signature in found:
            self._seen[session] = seen = deque(item for item in seen if item[1] != signature)
            del counts[signature]
        return found

    def _forget_quiet(self, at: float) -> None:
        """Sessions with no call within the window."""
        for session in [s for s, seen in self._seen.items() if not seen or seen[-1][0] < at - self.window]:
            del self._seen[session], self._counts[session]


class Guard:
    def __init__(
        self,
        writer,
        push: Callable[[dict], None],
        announce: Callable[[str], None],
        defaults: budgets.Defaults,
        loop_calls: int,
        loop_minutes: float,
        on_loop: str,
        burn_rate_k: float,
        alert_command: list[str],
        idle_seconds: float,
    ) -> None:
        self._writer = writer
        self._push = push
        self._announce = announce
        self._defaults = defaults
        self._loops = LoopWatch(loop_calls, loop_minutes)
        self._on_loop = on_loop
        self._burn_rate_k = burn_rate_k
        self._alert_command = alert_command
        self._idle_seconds = idle_seconds
        self._pushed: str | None = None
        self._last_refresh = 0.0
        self._last_burn_check = 0.0
        self._baseline_at: float = -BASELINE_SECONDS
        self._threshold: float | None = None
        self._approved: list[forecast.Outcome] = []  # the approved tasks forecasts are made from, read with the baseline
        self._commands: list[subprocess.Popen] = []  # alert commands still running, reaped as they end
        self._raised_keys: set[str] = set()  # budget crossings already handled: no write every refresh
        self._open_loops: set[str] = set()  # keys of open loop alerts, read at each refresh
        # A budget in block mode was in the last state pushed (or none was pushed
        # yet): the proxy counts calls in flight, so each batch stored is pushed at once.
        self._proxy_counts = True
        # When the state was last worked out: the connection and its data_version,
        # which moves when another connection writes (`meter budget`, `set-task`,
        # `alerts clear`...); and whether calls stored since then spend a budget.
        self._read_at: tuple | None = None
        self._spent = True
        self._budgets_spent = True  # stored calls spend a budget: one is set, or a default one is

    # ------------------------------------------------------------ events

    def stored(self, rows: list[CallRow]) -> None:
        """After a batch is stored: loops, then what the proxy must know: at once
        while it counts calls in flight or when a loop is to be refused, else at
        most every REFRESH_SECONDS."""
        blocked_loop = False
        for row in rows:
            call = row.interaction
            if not row.loop_signatures or not call.session_id:
                continue
            started = from_stored(call.started_at).timestamp()  # a replayed spool keeps its calls' own times
            looping = json.dumps([call.session_id, call.task_id, call.client])  # a loop is one client's in one task
            for signature in self._loops.observe(looping, started, row.loop_signatures):
                blocked_loop |= bool(self._writer.quietly(self._loop_alert, call, signature))
        self._spent |= self._budgets_spent and bool(rows)
        if self._proxy_counts:
            self.refresh(force=True, settled=[row.interaction.id for row in rows if not row.interaction.blocked])
        else:
            self.refresh(force=blocked_loop)

    def refresh(self, force: bool = False, settled: Sequence[str] = ()) -> None:
        """Push the state if it changed; with `settled`, the IDs of calls just stored, push it anyway."""
        now = time.monotonic()
        if not force and now - self._last_refresh < REFRESH_SECONDS:
            return
        self._last_refresh = now
        if force or self._writer.quietly(self._may_have_changed, default=True):
            self._push_state(settled)
        if now - self._last_burn_check >= BURN_RATE_SECONDS:
            self._last_burn_check = now
            self._writer.quietly(self._burn_rate, now)

    def refresh_due(self) -> float:
        """When (time.monotonic()) refresh() next does anything but return: the
        recorder sleeps until then when no batch comes."""
        return self._last_refresh + REFRESH_SECONDS

    def _push_state(self, settled: Sequence[str]) -> None:
        state = self._writer.quietly(self._state)
        if state is None:
            self._read_at = None  # the database cannot be read now: the proxy keeps the last state
            return
        message = json.dumps(state, sort_keys=True)
        if message != self._pushed or settled:
            self._pushed = message
            self._proxy_counts = any(scope["blocks"] for scope in state["budgets"].values())
            self._push({**state, "settled": settled})

    def _may_have_changed(self, db) -> bool:
        """Whether the state may differ from the one last worked out: the state is
        read from the database alone, so only a write can change it, by another
        connection or, with a budget in force, the calls we stored. Working it out
        again for nothing read every budget's spend twice a second."""
        read_at = (db, db.execute("PRAGMA data_version").fetchone()[0])
        changed = self._spent or read_at != self._read_at  # a connection equals only itself
        self._read_at = read_at
        self._spent = False
        return changed

    # ------------------------------------------------------------ rules

    def _state(self, db) -> dict:
        """What the proxy needs (IDs lower-case): per budget (`task:P1-010`,
        `phase:P1`) its header, mode, refusal once spent and room
        (analytics/budgets.py guarded_scopes); the tasks whose phase is not the one
        their ID names (the proxy takes any other task's from its ID, seen or not);
        the current task; the bound Claude Code sessions; the sessions and
        conversations blocked for looping."""
        statuses = budgets.budget_statuses(db, self._defaults)
        self._budgets_spent = bool(statuses or self._defaults.task_tokens or self._defaults.task_usd)
        for status in statuses:
            self._crossings(db, status)
        current = tasks.current_task(db)
        self._open_loops = {row[0] for row in db.execute("SELECT key FROM alerts WHERE kind = 'loop' AND cleared_at IS NULL")}
        return {
            "current_task": current.task_id.lower() if current else None,
            "budgets": budgets.guarded_scopes(db, statuses),
            "phases": {
                row[0].lower(): row[1].lower()
                for row in db.execute("SELECT id, phase_id FROM tasks")
                if row[1] != tasks.infer_phase(row[0])
            },
            "sessions": {row[0]: row[1].lower() for row in db.execute("SELECT session_id, task_id FROM session_tasks")},
            "blocked": alerts.blocked(db),
        }

    def _crossings(self, db, status: dict) -> None:
        for share in budgets.WARN_AT:
            if status["used_share"] < share:
                break
            percent = round(share * 100)
            then = "new calls are refused" if status["blocks"] else "calls go on (on_exceeded = warn)"
            message = f"budget {percent}% used: {budgets.describe(status)}" + (f"; {then}" if share >= 1 else "")
            # Once per budget as set: a new budget (or a new default) warns afresh.
            budget = status["set_at"] or f"default-{status['tokens_budget']}-{status['usd_budget']}"
            key = f"budget:{status['scope']}:{status['target']}:{percent}:{budget}"
            if key in self._raised_keys:
                continue
            self._raised_keys.add(key)
            task_id = status["target"] if status["scope"] == "task" else None
            self._raised(alerts.raise_alert(db, "budget", key, message, task_id=task_id, once=True))

    def _loop_alert(self, db, call, signature: str) -> bool:
        """Raise the loop's alert unless it is open; True when it is new and blocks."""
        blocks = self._on_loop == "block"
        what = "the same tool call with the same arguments" if signature.startswith("tools:") else "near-identical requests"
        message = (
            f"loop: session {call.session_id} sent {self._loops.calls} calls of {what} within "
            f"{self._loops.window / 60:g} min (task {call.task_id or 'unassigned'}, client {call.client or '?'}, "
            f"model {call.model or '?'})" + ("; its calls are refused until `meter alerts clear`" if blocks else "")
        )
        key = alerts.loop_key(call.session_id, call.task_id, call.client, signature)
        if key in self._open_loops:
            return False  # the loop goes on, already told: no write
        # The proxy knows a client's own session by its header; other clients by
        # their conversation, in the task and from the client that looped.
        conversation = None if call.client_session else call.conversation_id
        alert = alerts.raise_alert(
            db,
            "loop",
            key,
            message,
            task_id=call.task_id,
            session_id=call.client_session,
            conversation_id=conversation,
            blocks=blocks,
        )
        self._open_loops.add(key)
        self._raised(alert)
        return blocks and alert is not None

    def _burn_rate(self, db, now: float) -> None:
        from taskmeter.analytics.listings import task_records
        from taskmeter.analytics.reports import task_report

        if now - self._baseline_at >= BASELINE_SECONDS:
            self._baseline_at = now
            records = task_records(db, idle_seconds=self._idle_seconds, intervals=False)
            approved = [r for r in records if r["status"] == "approved"]
            rates = [rules.tokens_per_working_hour(r) for r in approved]
            self._threshold = rules.burn_rate_threshold([rate for rate in rates if rate is not None], self._burn_rate_k)
            self._approved = forecast.approved_in_order(forecast.outcome_of(r) for r in approved)
            for listed in records:  # every open task now and then: calls reach tasks that are not current too
                self._past_forecast(db, listed)
        current = tasks.current_task(db)
        if current is None:
            return
        record = task_report(db, current.task_id, idle_seconds=self._idle_seconds)
        self._past_forecast(db, record)
        if self._threshold is None:
            return
        rate = rules.tokens_per_working_hour(record)
        if rate is not None and rate > self._threshold:
            message = (
                f"burn rate: {current.task_id} uses {rate:,.0f} tokens per working hour, above "
                f"{self._threshold:,.0f} (median + {self._burn_rate_k:g} MAD of the approved tasks)"
            )
            key = f"burn_rate:{current.task_id}"
            self._raised(alerts.raise_alert(db, "burn_rate", key, message, task_id=current.task_id, once=True))

    def _past_forecast(self, db, record) -> None:
        """An open task past the upper end of its forecast's interval, in working time,
        tokens or cost: an alert, once per task and quantity (docs/forecasts.md)."""
        if record["status"] == "approved":
            return
        predicted = forecast.forecast_task(forecast.outcome_of(record), self._approved).record
        for quantity in predicted["past_high"]:
            message = forecasts.past_high_message(predicted, quantity)
            key = f"forecast:{record['task_id']}:{quantity}"
            self._raised(alerts.raise_alert(db, "forecast", key, message, task_id=record["task_id"], once=True))

    # ------------------------------------------------------------ telling the user

    def _raised(self, alert: dict | None) -> None:
        """A new alert: a line in the proxy's output, and the alert command."""
        if alert is None:
            return
        self._announce(f"meter: ALERT {alert['message']}")
        self._commands = [command for command in self._commands if command.poll() is None]
        if self._alert_command:
            try:
                self._commands.append(
                    subprocess.Popen(
                        [*self._alert_command, alert["message"]],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
            except OSError as exc:
                log.warning("meter: alert_command %s could not run: %s", self._alert_command[0], exc)
