"""Waiting, without sleeping blind, until a running proxy's Guard holds what the
recorder worked out after every `meter` command run so far (docs/budgets.md)."""

import time

import httpx

from tests.proxy_harness import RunningProxy

PROBE_TASK = "P99-001"  # in the tests' own phase naming, so their first P1-… task needs no --create
EMBEDDINGS = "/v1/embeddings"  # the probe's call: give the fake upstream a route for it that reports no usage


class Probe:
    """The probe task's budget is set to a new amount, then a probe call (an
    embedding through the `openai` upstream: no usage, not an AI interaction) is
    made until its x-meter-budget header shows that amount: the state the proxy
    holds was then worked out after the command. Its first call creates the
    probe task, leaving the current task as it is. Its calls are stored too;
    `is_probe` tells their rows apart."""

    def __init__(self, proxy: RunningProxy, meter) -> None:
        self._proxy, self._meter = proxy, meter
        self._amount = 10**9
        self._call()
        deadline = time.monotonic() + 10
        while not any(self.is_probe(row) for row in proxy.rows(wait_for=0)):
            if time.monotonic() > deadline:
                raise AssertionError("the probe's first call was never stored")
            time.sleep(0.05)

    def proxy_knows(self) -> None:
        self._amount += 1
        self._run("task", PROBE_TASK, "--budget", str(self._amount))
        expected = f"task={PROBE_TASK}; tokens-remaining={self._amount}; used=0.0%"
        deadline = time.monotonic() + 10
        while (seen := self._call().headers.get("x-meter-budget")) != expected:
            if time.monotonic() > deadline:
                raise AssertionError(f"the proxy never showed the probe's new budget: {seen!r}, expected {expected!r}")
            time.sleep(0.05)

    def _call(self) -> httpx.Response:
        return httpx.post(f"{self._proxy.origin}/t/{PROBE_TASK}/openai{EMBEDDINGS}", json={"model": "e", "input": "x"})

    @staticmethod
    def is_probe(row: dict) -> bool:
        return row["endpoint"].endswith(EMBEDDINGS)

    def _run(self, *args: str) -> None:
        result = self._meter(*args)
        assert result.code == 0, result.err
