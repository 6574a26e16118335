"""The Responses API over WebSocket, through D (direct to a loopback WebSocket
mock), M (bare mitmproxy) and P (`meter proxy`), in the same window.

The mock answers each `response.create` with `response.created`, FRAMES text
deltas and `response.completed` (usage: input 1000 + the create's `n`, output
FRAMES). The create's `metadata` sets the pace: `delay_ms` before the first frame,
`interval_ms` between frames.
Run the mock: python -m bench.websocket  (prints the port, serves until killed).
"""

import asyncio
import json
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from bench.arms import Arm
from bench.measures import summary

FRAMES = 32
PATH = "/v1/responses"
DELTA = "tok " * 4


def _frames(create: dict) -> tuple[float, float, list[str]]:
    plan = create.get("metadata") or {}
    response = {"id": f"resp_bench_{plan.get('n', 0)}", "object": "response", "model": "gpt-5.4-mini-2026-03-17"}
    usage = {"input_tokens": 1000 + int(plan.get("n", 0)), "output_tokens": FRAMES, "total_tokens": 1000 + FRAMES}
    frames = [json.dumps({"type": "response.created", "response": {**response, "status": "in_progress"}})]
    frames += [json.dumps({"type": "response.output_text.delta", "output_index": 0, "delta": DELTA})] * FRAMES
    frames.append(json.dumps({"type": "response.completed", "response": {**response, "status": "completed", "usage": usage}}))
    return int(plan.get("delay_ms", 0)) / 1000, int(plan.get("interval_ms", 0)) / 1000, frames


async def _answer(connection) -> None:
    async for message in connection:
        delay, interval, frames = _frames(json.loads(message))
        if delay:
            await asyncio.sleep(delay)
        for index, frame in enumerate(frames):
            await connection.send(frame)
            if interval and 0 < index <= FRAMES:
                await asyncio.sleep(interval)


async def _serve_mock() -> None:
    async with serve(_answer, "127.0.0.1", 0, compression=None, max_size=None) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()


def start_mock() -> Arm:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.websocket"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    return Arm("D", int(process.stdout.readline()), PATH, process)


def ms(seconds: float) -> float:
    return seconds * 1000


def _create(n: int, **pace) -> str:
    return json.dumps({"type": "response.create", "model": "gpt-5.4-mini", "input": "bench", "metadata": {"n": n, **pace}})


async def _response(ws, create: str) -> tuple[float, float, int]:
    """Seconds to the first frame and to the terminal one, and the frames received."""
    started = time.perf_counter()
    await ws.send(create)
    first, frames = None, 0
    while True:
        event = json.loads(await ws.recv())
        frames += 1
        if first is None:
            first = time.perf_counter() - started
        if event["type"] == "response.completed":
            return first, time.perf_counter() - started, frames


class Sockets:
    """One socket per arm, kept open; the meter's responses counted, to check that each is stored."""

    def __init__(self, arms: list[Arm]) -> None:
        self.arms = arms
        self.metered = 0  # responses through P

    def url(self, arm: Arm) -> str:
        return f"ws://127.0.0.1:{arm.port}{arm.path}"

    async def interleaved(self, samples: int, warmup: int, **pace) -> dict[str, list[tuple[float, float]]]:
        """c=1, one response per arm in turn (order shuffled each round)."""
        sockets = {arm.name: await connect(self.url(arm), compression=None, max_size=None) for arm in self.arms}
        times: dict[str, list[tuple[float, float]]] = {arm.name: [] for arm in self.arms}
        try:
            for index in range(warmup + samples):
                order = self.arms[:]
                random.shuffle(order)
                for arm in order:
                    first, total, _ = await _response(sockets[arm.name], _create(index, **pace))
                    self.metered += arm.name == "P"
                    if index >= warmup:
                        times[arm.name].append((first, total))
        finally:
            for ws in sockets.values():
                await ws.close()
        return times

    async def concurrent(self, arm: Arm, count: int, rounds: int, first_n: int, **pace) -> dict:
        """`count` sockets at once, `rounds` responses on each (numbered from `first_n`): frames that did not arrive."""

        async def one(index: int) -> int:
            async with connect(self.url(arm), compression=None, max_size=None) as ws:
                received = 0
                for turn in range(rounds):
                    received += (await _response(ws, _create(first_n + index * rounds + turn, **pace)))[2]
                return received

        received = await asyncio.gather(*(one(index) for index in range(count)))
        if arm.name == "P":
            self.metered += count * rounds
        return {"responses": count * rounds, "lost_frames": count * rounds * (FRAMES + 2) - sum(received)}


def stored_responses(db_path: Path, first_n: int, count: int) -> dict:
    """The meter's rows of the concurrent responses (inputs 1000 + first_n ...): how many, and are their usages exact."""
    expected = {1000 + first_n + index for index in range(count)}
    with sqlite3.connect(db_path) as db:
        rows = db.execute(
            "SELECT input_total, output_total FROM interactions WHERE protocol = 'openai_responses' AND input_total >= ?",
            (1000 + first_n,),
        ).fetchall()
    inputs = [row[0] for row in rows]
    exact = sorted(inputs) == sorted(expected) and all(row[1] == FRAMES for row in rows)
    return {"expected": count, "stored": len(rows), "lost": len(expected - set(inputs)), "exact_usage": exact}


if __name__ == "__main__":
    try:
        asyncio.run(_serve_mock())
    except KeyboardInterrupt:
        sys.exit(0)


async def measure(arms: list[Arm], db_path: Path, samples: int, sockets: int, rounds: int, log) -> dict:
    """Every WebSocket figure: per-frame cost, buffering, and responses over concurrent sockets."""
    through = Sockets(arms)
    log(f"WebSocket, {FRAMES} frames with no delay, c=1: the meter's cost per frame")
    flat = await through.interleaved(samples, 5)
    log(f"WebSocket, 20 ms to the first frame, then {FRAMES} frames every 5 ms, c=1: is anything held back?")
    paced = await through.interleaved(max(5, samples // 4), 2, delay_ms=20, interval_ms=5)
    log(f"WebSocket, {sockets} concurrent sockets x {rounds} responses")
    first_n = 1_000_000
    concurrent = {arm.name: await through.concurrent(arm, sockets, rounds, first_n) for arm in arms}
    return {
        "metered": through.metered,  # responses through P, each a call the meter must store
        "sockets": sockets,
        "rounds": rounds,
        "flat_out_ms": {name: summary([ms(total) for _, total in times]) for name, times in flat.items()},
        "first_frame_ms": {name: summary([ms(first) for first, _ in times]) for name, times in paced.items()},
        "concurrent": concurrent,
        "stored": await _stored_when_done(db_path, first_n, sockets * rounds),
    }


async def _stored_when_done(db_path: Path, first_n: int, count: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        found = stored_responses(db_path, first_n, count)
        if found["stored"] >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


def targets(r: dict, row) -> list[dict]:
    flat, first, concurrent, stored = r["flat_out_ms"], r["first_frame_ms"], r["concurrent"], r["stored"]
    per_frame = (flat["P"]["p50"] - flat["M"]["p50"]) / (FRAMES + 2)
    first_ratio = first["P"]["p50"] / first["M"]["p50"]
    return [
        row(
            f"WebSocket, {FRAMES + 2} frames with no delay, c=1: added latency per frame, P-M p50",
            "<= 0.1 ms",
            per_frame,
            per_frame <= 0.1,
            f"P {flat['P']['p50']:.2f} ms, M {flat['M']['p50']:.2f} ms, D {flat['D']['p50']:.2f} ms per response",
        ),
        row(
            "WebSocket never buffered: first frame (20 ms upstream), P/M p50",
            "<= 1.05",
            first_ratio,
            first_ratio <= 1.05,
            f"P {first['P']['p50']:.2f} ms, M {first['M']['p50']:.2f} ms, D {first['D']['p50']:.2f} ms",
        ),
        row(
            f"{r['sockets']} concurrent WebSockets x {r['rounds']} responses: responses the meter did not store (usage exact)",
            "0",
            stored["lost"],
            stored["lost"] == 0 and stored["stored"] == stored["expected"] and stored["exact_usage"],
            f"{stored['stored']} stored of {stored['expected']}, usage exact: {'yes' if stored['exact_usage'] else 'no'}; "
            + ", ".join(f"{name} lost {c['lost_frames']} frames" for name, c in concurrent.items()),
        ),
    ]
