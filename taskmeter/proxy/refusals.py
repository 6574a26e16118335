"""The Guard addon: whether a spent budget or a loop refuses a call, decided on
the event loop by dictionary lookups and counters in the state the recorder
pushes (recorder/planner.py; docs/budgets.md).

A budget in block mode refuses every new call once its stored spend reaches it.
Until then the proxy counts, per such budget, its calls in flight (let through,
not yet said stored by the recorder). A new call waits, instead of starting,
while those calls could spend what is left: as many are in flight as the budget
has room for (its spend left over its mean call). It goes on, or is refused,
when the recorder says they are stored, which it does after every batch while
such a budget is set. So a budget is overshot by at most the calls in flight
when its spend crossed it, and the calls of one client one after another stop
at the first call after the crossing one.
"""

import asyncio
import enum
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from mitmproxy import http

from taskmeter.handover.call import CapturedCall
from taskmeter.protocols import provider_errors
from taskmeter.protocols.conversation import request_json, root_hash
from taskmeter.proxy.addons import _CALL, BUDGET_HEADER
from taskmeter.store.tasks import infer_phase

# Longest a call waits for the spend of the calls in flight; then it goes on, judged on the spend stored.
WAIT_SECONDS = 30.0
# A call that ended this long ago and was never said stored (quarantined, or lost
# with a full disk) no longer counts as in flight.
FORGET_SECONDS = 60.0
# Finding a request's conversation parses it whole, on the event loop, at about
# 3 ms a megabyte: a larger request is not checked against a blocked conversation.
LOOP_CHECK_MAX_BYTES = 2 * 1024 * 1024


class Hold(enum.Enum):
    """A verdict: neither let through nor refused yet."""

    HOLD = "hold"


HOLD: Final = Hold.HOLD


class Refusal(NamedTuple):
    """A verdict: the call is answered by the meter (429 over HTTP, an `error`
    event on a WebSocket), never reaches the upstream, and is stored as blocked."""

    cause: str  # "budget" or "loop" (provider_errors.CAUSES)
    message: str

    def mark(self, call: CapturedCall) -> None:
        call.blocked, call.error = self.cause, self.message


@dataclass(frozen=True, slots=True)
class GuardState:
    """What the recorder pushes, IDs lower-case: per budget (`task:p1-010`,
    `phase:p1`) its header, mode, refusal once spent and room; the tasks whose
    phase is not the one their ID names; the current task; bound Claude Code
    sessions; the sessions, and per task and client the conversation roots, a loop blocks."""

    current_task: str | None = None
    budgets: dict = field(default_factory=dict)
    phases: dict = field(default_factory=dict)
    sessions: dict = field(default_factory=dict)
    blocked_sessions: dict = field(default_factory=dict)
    blocked_conversations: dict = field(default_factory=dict)


class Guard:
    """Budgets and loops. A refused call gets HTTP 429 in its provider's shape
    with `x-should-retry: false` (the official SDKs and Claude Code then do not
    retry), never reaches the upstream, and is recorded as blocked. The verdict
    (judge, held) is the one a `response.create` on a WebSocket gets too
    (proxy/websocket.py), refused there with an `error` event. Calls in
    flight are never cut. A call is judged on its own task (the /t/ prefix, the
    header, a bound Claude Code session), else on the current one, and on that
    task's phase, seen before or not."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._state = GuardState()
        self._loop = loop  # states come in on another thread, and are applied on this loop
        self._flying: dict[str, tuple[CapturedCall, tuple[str, ...]]] = {}  # call ID -> (call, budgets it counts in)
        self._in_flight: dict[str, int] = {}  # budget -> its calls in flight
        self._changed = asyncio.Event()  # set (and replaced) at each state: waiting calls look again
        # A budget in block mode is set: calls in flight are counted until the
        # recorder says them stored, so the hand-over sends each call at once.
        self.counts_in_flight = False

    # ------------------------------------------------------------ the recorder's state

    def take_state(self, state: dict) -> None:
        """From the hand-over's reply thread."""
        if self._loop is None:
            self._apply(state)
            return
        try:
            self._loop.call_soon_threadsafe(self._apply, state)
        except RuntimeError:
            pass  # the event loop is closed: the proxy has stopped, no call is left to judge

    def _apply(self, state: dict) -> None:
        self._state = GuardState(
            state["current_task"],
            state["budgets"],
            state["phases"],
            state["sessions"],
            state["blocked"]["sessions"],
            state["blocked"]["conversations"],
        )
        self.counts_in_flight = any(budget["blocks"] for budget in state["budgets"].values())
        if not self.counts_in_flight:
            self._flying.clear()  # nothing to count against: the recorder stops saying what it stored
            self._in_flight.clear()
        for call_id in state["settled"]:
            self._landed(call_id)
        forgotten = time.time() - FORGET_SECONDS
        for call_id in [i for i, (call, _) in self._flying.items() if call.ended is not None and call.ended < forgotten]:
            self._landed(call_id)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _landed(self, call_id: str) -> None:
        flying = self._flying.pop(call_id, None)
        if flying is not None:
            for key in flying[1]:
                self._in_flight[key] -= 1

    # ------------------------------------------------------------ the verdict, for HTTP and WebSocket alike

    def judge(self, call: CapturedCall, may_hold: bool = True) -> Refusal | Hold | None:
        """A call about to start: None (let through, counted as in flight when a
        budget in block mode covers it), a Refusal, or HOLD: wait in held() for
        the calls in flight. Lookups and counters only: hooks call it as they go."""
        state = self._state
        if call.operation != "generate" or not (state.budgets or state.blocked_sessions or state.blocked_conversations):
            return None
        task = self._task(call, state)
        looping = self._looping(call, task, state)
        if looping is not None:
            return Refusal("loop", looping)
        return self._judge(call, task, may_hold)

    def held(self, call: CapturedCall) -> Coroutine[None, None, Refusal | None]:
        """The verdict on a call judged HOLD, once the recorder has said enough
        calls in flight were stored; after WAIT_SECONDS, on the spend stored.
        Its task is the one it was judged on."""
        return self._held(call, self._task(call, self._state))

    async def _held(self, call: CapturedCall, task: str | None) -> Refusal | None:
        deadline = time.monotonic() + WAIT_SECONDS
        verdict: Refusal | Hold | None = HOLD
        while verdict is HOLD:
            try:
                await asyncio.wait_for(self._changed.wait(), deadline - time.monotonic())
                verdict = self._judge(call, task, may_hold=True)
            except TimeoutError:
                verdict = self._judge(call, task, may_hold=False)  # the recorder is slow: judged on the spend stored
        return verdict

    # ------------------------------------------------------------ hooks

    def request(self, flow: http.HTTPFlow):
        call: CapturedCall | None = flow.metadata.get(_CALL)
        if call is None:
            return None
        verdict = self.judge(call)
        if verdict is HOLD:
            return self._hold(flow, call)  # mitmproxy awaits it: this call alone waits
        if verdict is not None:
            self._refuse(flow, call, verdict)
        return None

    async def _hold(self, flow: http.HTTPFlow, call: CapturedCall) -> None:
        verdict = await self.held(call)
        if verdict is not None:
            self._refuse(flow, call, verdict)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call: CapturedCall | None = flow.metadata.get(_CALL)
        state = self._state
        if call is None or not state.budgets:
            return
        budgets = [budget for _, budget in self._budgets(self._task(call, state), state)]
        if budgets:  # the one that binds: the highest share used, its own on a tie (analytics/budgets.py binding)
            assert flow.response is not None  # mitmproxy calls this hook with the response's headers
            flow.response.headers[BUDGET_HEADER] = max(budgets, key=lambda budget: budget["used_share"])["header"]

    # ------------------------------------------------------------ judging

    def _judge(self, call: CapturedCall, task: str | None, may_hold: bool) -> Refusal | Hold | None:
        """A budget's Refusal, HOLD, or None: let through, and counted as in flight."""
        blocking = [(key, budget) for key, budget in self._budgets(task, self._state) if budget["blocks"]]
        if not blocking:
            return None
        for _, budget in blocking:
            if budget["refusal"]:
                return Refusal("budget", budget["refusal"])
        in_flight = self._in_flight
        if may_hold:
            for key, budget in blocking:
                flying, room = in_flight.get(key, 0), budget["room"]
                if flying and room is not None and flying >= room:
                    return HOLD
        keys = tuple(key for key, _ in blocking)
        self._flying[call.id] = (call, keys)
        for key in keys:
            in_flight[key] = in_flight.get(key, 0) + 1
        return None

    @staticmethod
    def _refuse(flow: http.HTTPFlow, call: CapturedCall, refusal: "Refusal") -> None:
        refusal.mark(call)
        flow.response = http.Response.make(
            429,
            provider_errors.body(call.protocol, 429, refusal.cause, refusal.message),
            {"content-type": "application/json", "x-should-retry": "false"},
        )

    @staticmethod
    def _task(call: CapturedCall, state: GuardState) -> str | None:
        if call.task_id:
            return call.task_id.lower()
        return state.sessions.get(call.client_session) or state.current_task

    @staticmethod
    def _budgets(task: str | None, state: GuardState) -> list[tuple[str, dict]]:
        """The budgets a call of `task` counts against: its own, then its phase's."""
        if task is None:
            return []
        own, phase = "task:" + task, "phase:" + (state.phases.get(task) or infer_phase(task))
        return [(key, state.budgets[key]) for key in (own, phase) if key in state.budgets]

    @staticmethod
    def _looping(call: CapturedCall, task: str | None, state: GuardState) -> str | None:
        """A loop alert's refusal: of a client's own session (Claude Code's, Codex's);
        of another client, its conversation in the task and from the client that
        looped. The stored conversation ID scopes the root to the task and the
        session, which for such a client the recorder derives from its stored
        calls: the proxy matches the root's hash within the task and the client."""
        if call.client_session and call.client_session in state.blocked_sessions:
            return state.blocked_sessions[call.client_session]
        conversations = state.blocked_conversations.get(task or "", {}).get(call.client or "")
        if conversations and len(call.request_body or b"") <= LOOP_CHECK_MAX_BYTES:
            # only for the client and task that looped: the request is hashed
            return conversations.get(root_hash(call.protocol, request_json(call.request_body)))
        return None
