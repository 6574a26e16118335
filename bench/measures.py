"""Each measurement of the harness. Every function returns plain numbers; the
targets and the write-up live in bench/__main__.py."""

import asyncio
import datetime
import http.client
import json
import os
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.arms import Arm, start_dashboard
from bench.client import Connection, Reply

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "mean": statistics.fmean(values) if values else None,
    }


async def _one(arm: Arm, connection: Connection, payload: dict, headers: dict) -> Reply:
    reply = await connection.post(arm.path, payload, headers)
    if reply.status != 200:
        raise RuntimeError(f"{arm.name} answered {reply.status}: {reply.body[:200]!r}")
    arm.sent += 1
    return reply


async def sequential_interleaved(
    arms: list[Arm], samples: int, warmup: int, payload: dict, headers: dict
) -> dict[str, list[Reply]]:
    """c=1, one request per arm in turn (order shuffled each round): same window for all."""
    connections = {arm.name: Connection("127.0.0.1", arm.port) for arm in arms}
    replies: dict[str, list[Reply]] = {arm.name: [] for arm in arms}
    for index in range(warmup + samples):
        order = arms[:]
        random.shuffle(order)
        for arm in order:
            reply = await _one(arm, connections[arm.name], payload, headers)
            if index >= warmup:
                replies[arm.name].append(reply)
    for connection in connections.values():
        await connection.close()
    return replies


async def parallel_arms(arms: list[Arm], samples: int, warmup: int, payload: dict, headers: dict) -> dict[str, list[Reply]]:
    """c=1 per arm, the arms side by side: for slow upstreams, where requests mostly wait."""

    async def run(arm: Arm) -> list[Reply]:
        connection = Connection("127.0.0.1", arm.port)
        out = []
        for index in range(warmup + samples):
            reply = await _one(arm, connection, payload, headers)
            if index >= warmup:
                out.append(reply)
        await connection.close()
        return out

    results = await asyncio.gather(*(run(arm) for arm in arms))
    return {arm.name: result for arm, result in zip(arms, results, strict=True)}


async def concurrent_streams(arm: Arm, streams: int, headers: dict) -> list[Reply]:
    """`streams` simultaneous streams, each on a new connection."""
    connections = [Connection("127.0.0.1", arm.port) for _ in range(streams)]
    replies = await asyncio.gather(*(_one(arm, c, STREAM, headers) for c in connections))
    for connection in connections:
        await connection.close()
    return list(replies)


async def sustained(arm: Arm, workers: int, seconds: float, headers: dict) -> dict:
    """Requests per second with `workers` keep-alive clients looping for `seconds`."""
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        connection = Connection("127.0.0.1", arm.port)
        while time.perf_counter() < deadline:
            try:
                reply = await _one(arm, connection, CHAT, headers)
                latencies.append(reply.total)
            except Exception:
                errors += 1
                await connection.close()
        await connection.close()

    cpu_before, started = arm.cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = time.perf_counter() - started
    cpu = arm.cpu_seconds() - cpu_before
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p99_ms": percentile(latencies, 99) * 1000,
        "cpu_ms_per_request": cpu * 1000 / len(latencies) if latencies else None,
    }


async def soak(arm: Arm, total: int, workers: int, samples: int = 5) -> list[float]:
    """RSS after each fifth of `total` zero-delay requests."""
    rss = [arm.rss_mb()]
    per_step = total // samples
    for _ in range(samples):
        queue = list(range(per_step))

        async def worker(queue: list = queue) -> None:
            connection = Connection("127.0.0.1", arm.port)
            while queue:
                queue.pop()
                await _one(arm, connection, CHAT, {})
            await connection.close()

        await asyncio.gather(*(worker() for _ in range(workers)))
        rss.append(arm.rss_mb())
    return rss


def writer_rows_per_second(rows: int) -> dict:
    """The store writer's sustained rate, attribution and context switches included."""
    from taskmeter.handover.pipe import BATCH as HANDOVER_BATCH
    from taskmeter.ids import IdGenerator
    from taskmeter.store import connection, tasks
    from taskmeter.store.calls import CallRow
    from taskmeter.store.interactions import Interaction
    from taskmeter.store.writer import Writer
    from taskmeter.timefmt import now_stored

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "writer.db"
        db = connection.connect(path)
        tasks.set_task(db, "P1-001")
        db.close()
        ids = IdGenerator()
        items = [
            CallRow(
                Interaction(
                    id=ids.new(),
                    started_at=now_stored(),
                    ended_at=now_stored(),
                    provider="openai",
                    protocol="openai_chat",
                    model="gpt-4o-mini",
                    input_total=1000 + n,
                    cache_read=512,
                    cache_write=0,
                    output_total=200,
                    reasoning=0,
                    usage_source="reported",
                    cost_usd=0.001,
                    conversation_id=f"c{n // 20}",
                    http_status=200,
                    outcome="complete",
                )
            )
            for n in range(rows)
        ]
        writer = Writer(path)
        started = time.perf_counter()
        for start in range(0, len(items), HANDOVER_BATCH):  # as the proxy hands them over
            assert writer.store(items[start : start + HANDOVER_BATCH]) == []
        elapsed = time.perf_counter() - started
        writer.close()
        return {"rows": len(items), "seconds": elapsed, "rows_per_second": len(items) / elapsed}


PHASES = 10
SWITCHES = 20_000


def build_history(path: Path, rows: int, tasks_count: int, flags: int, switches: bool) -> float:
    """The issue's history: `rows` calls over `tasks_count` tasks in PHASES phases.
    With `switches`, SWITCHES set-task events, a new session at each return (so a
    context switch every rows/SWITCHES calls); without, one session per task, no
    switch at all. Returns the seconds the build took."""
    from taskmeter.ids import IdGenerator
    from taskmeter.store import connection, tasks
    from taskmeter.store.interactions import COLUMNS
    from taskmeter.timefmt import to_stored

    started = time.perf_counter()
    db = connection.connect(path)
    per_phase = max(1, tasks_count // PHASES)
    task_ids = [f"P{1 + n // per_phase}-{n % per_phase:03d}" for n in range(tasks_count)]
    origin = 1_767_600_000  # 2026-01-05
    with connection.write_transaction(db):
        for task_id in task_ids:
            tasks.ensure_task(db, task_id, to_stored(datetime.datetime.fromtimestamp(origin, datetime.UTC)))
            db.execute("UPDATE tasks SET estimate_seconds = 3600 WHERE id = ?", (task_id,))
    intervals = SWITCHES if switches else tasks_count
    calls_per_interval = max(1, rows // intervals)

    def stamp(seconds: float) -> str:
        return to_stored(datetime.datetime.fromtimestamp(origin + seconds, datetime.UTC))

    ids = IdGenerator()
    placeholders = ", ".join("?" for _ in COLUMNS)
    db.execute("BEGIN")
    if switches:
        db.executemany(
            "INSERT INTO task_events (task_id, kind, at) VALUES (?, 'switch', ?)",
            [(task_ids[(k * 37) % tasks_count], stamp(k * 200)) for k in range(intervals)],
        )
    batch = []
    for n in range(rows):
        k, position = divmod(n, calls_per_interval)
        k = min(k, intervals - 1)
        task_id = task_ids[(k * 37) % tasks_count] if switches else task_ids[k]
        at = stamp(k * 200 + 1 + position * (199 / calls_per_interval)) if switches else stamp(k * 86400 + position * 4)
        row = dict.fromkeys(COLUMNS)
        row.update(
            id=ids.new(), task_id=task_id, attribution="current" if switches else "path", started_at=at, ended_at=at,
            provider="anthropic", protocol="anthropic", operation="generate", model="claude-sonnet-4-5", streamed=1,
            http_status=200, outcome="complete", input_total=1200, cache_read=800, cache_write=0, output_total=300,
            reasoning=40, usage_source="reported", cost_usd=0.0004, price_basis="api", conversation_id=f"{task_id}-{k}",
            conversation_root=f"{task_id}-{k}",
            session_id=f"{task_id}-{k}" if switches else task_id, client_session=None,
            context_switch=int(switches and position == 0 and k >= tasks_count),
        )  # fmt: skip
        batch.append(tuple(row[c] for c in COLUMNS))
        if len(batch) == 10_000:
            db.executemany(f"INSERT INTO interactions ({', '.join(COLUMNS)}) VALUES ({placeholders})", batch)
            batch.clear()
    if batch:
        db.executemany(f"INSERT INTO interactions ({', '.join(COLUMNS)}) VALUES ({placeholders})", batch)
    flagged = [row[0] for row in db.execute(f"SELECT id FROM interactions ORDER BY random() LIMIT {flags}")]
    db.executemany(
        "INSERT INTO flags (interaction_id, flagged_at) VALUES (?, '2026-06-01T00:00:00.000000Z')", [(i,) for i in flagged]
    )
    db.execute("COMMIT")
    db.close()
    return time.perf_counter() - started


def _median_ms(action, runs: int) -> float:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000


def _wall_ms(command: list[str], runs: int) -> float:
    return _median_ms(lambda: subprocess.run(command, capture_output=True, check=True), runs)


def large_store_reads(rows: int, tasks_count: int, flags: int, runs: int, command_runs: int, dashboard_runs: int) -> dict:
    """Over both of the issue's histories: `meter report` and `meter report phase
    ID --format json`, their work in process and their wall time with start-up;
    and over the first, the cost of `meter statusline`."""
    from taskmeter.analytics.reports import overview_report, phase_report
    from taskmeter.store import connection

    meter = str(Path(sys.executable).parent / "meter")
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, switches in (("with_switches", True), ("no_switches", False)):
            path = Path(folder) / f"{name}.db"
            build_seconds = build_history(path, rows, tasks_count, flags, switches)
            db = connection.connect(path)
            overview_report(db)  # warm the page cache, as a second report would find it
            phase = phase_of(tasks_count)
            results[name] = {
                "rows": rows,
                "build_seconds": build_seconds,
                "overview_ms": _median_ms(lambda db=db: overview_report(db), runs),
                "phase_ms": _median_ms(lambda db=db, phase=phase: phase_report(db, phase), runs),
                "overview_wall_ms": _wall_ms([meter, "report", "--json", "--db", str(path)], runs),
                "phase_wall_ms": _wall_ms([meter, "report", "phase", phase, "--format", "json", "--db", str(path)], runs),
            }
            db.close()
        results["statusline"] = statusline_cost(Path(folder) / "with_switches.db", runs=4 * runs)
        results["dashboard"] = dashboard_over_history(Path(folder) / "with_switches.db", tasks_count, dashboard_runs)
        # After the dashboard's: a task of the history is current, as `meter status` usually finds one.
        results["commands"] = read_command_costs(Path(folder) / "with_switches.db", phase_of(tasks_count), command_runs)
    statusline, dashboard, commands = results.pop("statusline"), results.pop("dashboard"), results.pop("commands")
    return {"report": results, "statusline": statusline, "dashboard_pages": dashboard, "read_commands": commands}


def phase_of(tasks_count: int) -> str:
    """The phase the report, dashboard and command measures read: one in the middle of the history."""
    return "P5" if tasks_count >= PHASES else "P1"


def dashboard_over_history(db_path: Path, tasks_count: int, runs: int) -> dict:
    """Each page's time to first byte over the history, with a task of it current."""
    from taskmeter.store import connection, tasks

    phase = phase_of(tasks_count)
    db = connection.connect(db_path)
    tasks.set_task(db, f"{phase}-000")
    db.close()
    pages = ["/", f"/phases/{phase}", f"/tasks/{phase}-000", "/history?period=daily"]
    return {"runs": runs, "ttfb_ms": dashboard_pages(db_path, pages, runs)}


def statusline_cost(db_path: Path, runs: int) -> dict:
    """Wall time of `meter statusline --db PATH` showing every item it can (today's
    and the session's cost too) against `python -c pass`, the two interleaved,
    medians of `runs` each."""
    from taskmeter.statusline import ITEMS

    meter = Path(sys.executable).parent / "meter"
    claude = json.dumps({"session_id": "bench-session", "model": {"display_name": "Opus"}, "workspace": {"current_dir": "/"}})
    commands = {"statusline": [str(meter), "statusline", "--db", str(db_path)], "python": [sys.executable, "-c", "pass"]}
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.toml"
        config.write_text("[statusline]\nshow = [" + ", ".join(f'"{item}"' for item in ITEMS) + "]\n")
        # Its own cache folder: the first run parses the settings and caches them, as a prompt's first line does.
        environ = {**os.environ, "METER_CONFIG": str(config), "XDG_CACHE_HOME": str(Path(folder) / "cache")}
        shown = subprocess.run(commands["statusline"], input=claude, capture_output=True, text=True, check=True, env=environ)
        # The session was never seen: the marker shows, and the session's cost.
        assert shown.stdout.startswith("NOT METERED · ") and " · session $" in shown.stdout, shown
        timings: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, command in commands.items():
                started = time.perf_counter()
                subprocess.run(command, input=claude, capture_output=True, text=True, check=True, env=environ)
                timings[name].append((time.perf_counter() - started) * 1000)
    medians = {name: statistics.median(values) for name, values in timings.items()}
    return {
        "runs": runs,
        "statusline_ms": medians["statusline"],
        "python_ms": medians["python"],
        "added_ms": medians["statusline"] - medians["python"],
    }


# Every command that only reads, as a person types it; `show last` and `status` find the
# history's task of phase_of() current (dashboard_over_history sets it).
READ_COMMANDS = {
    "status": ["status"],
    "log": ["log"],
    "show last": ["show", "last"],
    "tasks": ["tasks"],
    "phases": ["phases"],
    "report": ["report"],
    "report task ID": ["report", "task", "{phase}-000"],
    "report phase ID --format json": ["report", "phase", "{phase}", "--format", "json"],
    "report hourly": ["report", "hourly"],
    "report daily": ["report", "daily"],
    "report weekly": ["report", "weekly"],
    "report monthly": ["report", "monthly"],
    "report models": ["report", "models"],
    "report sessions": ["report", "sessions"],
    "report blocks": ["report", "blocks"],
    "budget": ["budget"],
    "alerts": ["alerts"],
    "doctor": ["doctor"],  # no proxy runs on the history: no network check
    "env": ["env"],
}


def read_command_costs(db_path: Path, phase: str, runs: int, names: list[str] | None = None) -> dict:
    """Each read command's wall time with `--db PATH`, output piped, against `python -c pass`,
    interleaved run by run; medians of `runs`. No user config is read: the shipped defaults, parsed by
    the first command and then read from the settings cache (config/files.py) in a folder of its own."""
    meter = str(Path(sys.executable).parent / "meter")
    with tempfile.TemporaryDirectory() as config_home:
        environ = {name: value for name, value in os.environ.items() if name not in ("METER_CONFIG", "METER_DB")}
        environ["XDG_CONFIG_HOME"] = config_home
        environ["XDG_CACHE_HOME"] = str(Path(config_home) / "cache")
        commands = {"python -c pass": [sys.executable, "-c", "pass"]}
        for name in names or READ_COMMANDS:
            arguments = [argument.format(phase=phase) for argument in READ_COMMANDS[name]]
            commands[name] = [meter, *arguments, "--db", str(db_path)]
        timings: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, command in commands.items():
                cpu_before, started = _children_cpu(), time.perf_counter()
                done = subprocess.run(command, capture_output=True, text=True, env=environ, stdin=subprocess.DEVNULL)
                timings[name].append((time.perf_counter() - started) * 1000)
                cpu[name].append((_children_cpu() - cpu_before) * 1000)
                # doctor says FAIL (exit 1) where no proxy runs: that is its answer, not an error of the command
                if done.returncode not in (0, 1) or "Traceback" in done.stderr or "meter: error" in done.stderr:
                    raise RuntimeError(f"meter {name} failed: {done.stderr[-500:]}")
    medians = {name: statistics.median(values) for name, values in timings.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu.items()}
    python, python_cpu = medians.pop("python -c pass"), cpu_medians["python -c pass"]
    return {
        "runs": runs,
        "python_ms": python,
        "python_cpu_ms": python_cpu,
        # CPU time (user + system) is context: on a busy machine it moves less than wall time.
        "commands": {
            name: {"wall_ms": wall, "added_ms": wall - python, "added_cpu_ms": cpu_medians[name] - python_cpu}
            for name, wall in medians.items()
        },
    }


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def dashboard_pages(db_path: Path, pages: list[str], runs: int) -> dict[str, float]:
    """Server time to first byte of each dashboard page (the page is rendered
    whole before its first byte), median of `runs` after one warm-up, in ms."""
    dashboard = start_dashboard(db_path)
    try:
        medians = {}
        for page in pages:
            timings = []
            for index in range(runs + 1):
                connection = http.client.HTTPConnection("127.0.0.1", dashboard.port, timeout=60)
                started = time.perf_counter()
                connection.request("GET", page, headers=dashboard.headers)
                response = connection.getresponse()
                first_byte = time.perf_counter()
                response.read()
                connection.close()
                if response.status != 200:
                    raise RuntimeError(f"dashboard page {page} answered {response.status}")
                if index:
                    timings.append((first_byte - started) * 1000)
            medians[page] = statistics.median(timings)
        return medians
    finally:
        dashboard.stop()


class FeedWatcher:
    """Reads the dashboard's live feed and notes when each call arrives."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self.port = port
        self.headers = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.arrived: dict[str, float] = {}  # interaction ID -> perf_counter
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writer.write(f"GET /feed HTTP/1.1\r\nhost: 127.0.0.1:{self.port}\r\n{self.headers}\r\n".encode())
        await self._writer.drain()
        self._task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            # Chunked framing lines never start with "data: ", so only events match.
            if line.startswith(b"data: "):
                self.arrived[json.loads(line[6:])["call"]["interaction_id"]] = time.perf_counter()

    async def stop(self) -> None:
        self._task.cancel()
        self._writer.close()


async def alternating(arms: list[Arm], samples: int, warmup: int, headers: dict, condition) -> dict:
    """c=1 latency of D and P side by side, in blocks without and with `condition`
    (an async context manager), alternated so that drift falls on both; the
    replies of the `with` blocks are handed to the condition's `replies`."""
    replies: dict[str, dict[str, list[Reply]]] = {block: {arm.name: [] for arm in arms} for block in ("without", "with")}
    for block in ("without", "with", "without", "with"):
        if block == "without":
            got = await parallel_arms(arms, samples, warmup, CHAT, headers)
        else:
            async with condition:
                got = await parallel_arms(arms, samples, warmup, CHAT, headers)
                await condition.replies(got["P"])
        for name, arm_replies in got.items():
            replies[block][name] += arm_replies
    latency = {
        block: {name: summary([r.total * 1000 for r in arm_replies]) for name, arm_replies in by_arm.items()}
        for block, by_arm in replies.items()
    }
    return {"latency": latency, "ratio": {block: latency[block]["P"]["p50"] / latency[block]["D"]["p50"] for block in latency}}


class DashboardOpen:
    """A dashboard on the meter's database with its live feed followed; notes how
    long each call took to reach the feed after its answer."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.feed_delays_ms: list[float] = []
        self.missing = 0

    async def __aenter__(self):
        self._dashboard = start_dashboard(self.db_path)
        self._watcher = FeedWatcher(self._dashboard.port, self._dashboard.headers)
        await self._watcher.start()

    async def replies(self, replies: list[Reply]) -> None:
        # The calls have 1.5 s after the last answer to reach the feed; the wait ends once all have.
        deadline = time.perf_counter() + 1.5
        ids = [reply.headers["x-meter-interaction-id"] for reply in replies]
        while not all(id_ in self._watcher.arrived for id_ in ids) and time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
        for reply in replies:
            arrived = self._watcher.arrived.get(reply.headers["x-meter-interaction-id"])
            if arrived is None:
                self.missing += 1
            else:
                self.feed_delays_ms.append((arrived - reply.ended) * 1000)

    async def __aexit__(self, *exc) -> None:
        await self._watcher.stop()
        self._dashboard.stop()


class BudgetsSet:
    """The current task with a budget far from spent, and 50 other budgets: every
    call is judged and gets an x-meter-budget header."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.headers_seen = 0

    async def __aenter__(self):
        from taskmeter.store import budgets, connection, tasks

        db = connection.connect(self.db_path)
        tasks.set_task(db, "B1-001")
        for n in range(50):
            budgets.set_budget(db, "task", f"B1-{n + 1:03d}", [("tokens", 10**12)], "block")
        db.close()
        await asyncio.sleep(1.0)  # the recorder tells the proxy within a second

    async def replies(self, replies: list[Reply]) -> None:
        self.headers_seen += sum("x-meter-budget" in reply.headers for reply in replies)

    async def __aexit__(self, *exc) -> None:
        from taskmeter.store import connection

        db = connection.connect(self.db_path)
        with connection.write_transaction(db):
            db.execute("DELETE FROM budgets")
        db.close()
        await asyncio.sleep(1.0)


def large_request_file(folder: Path, megabytes: int) -> Path:
    """A large streamed chat request (48 MB), as an agent sends a big context: code with
    quotes and line ends (so escapes all through the text), `stream` after the messages."""
    path = folder / "large-request.json"
    line = 'print("hello, world")  # a line of code\n'
    text = line * (megabytes * 1024 * 1024 // len(json.dumps(line)))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "stream": True}
    path.write_bytes(json.dumps(body).encode())
    return path


def _large_transfer(arm: Arm, kind: str, request_file: Path, stream_mb: int) -> subprocess.Popen:
    url = f"http://127.0.0.1:{arm.port}{arm.path}"
    command = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", "content-type: application/json", url]
    if kind == "stream":
        command += ["-H", f"x-mock-stream-mb: {stream_mb}", "--data-binary", json.dumps(STREAM)]
    else:
        command += ["--data-binary", f"@{request_file}"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def beside_large_bodies(arms: list[Arm], rounds: int, folder: Path, settle, megabytes: dict[str, int]) -> dict:
    """Per arm and kind (a streamed response, a request, of `megabytes[kind]` MB: 100 and 48): the latency
    of small calls (non-streamed, zero delay, c=1) made while the large body passes
    through the arm, then until the arm is done with it (`settle(arm)`; the meter:
    handed over and stored), and of as many made just before, with nothing else
    passing. The large body goes through curl, in a process of its own, so that
    moving its bytes costs this loop nothing."""
    request_file = large_request_file(folder, megabytes["request"])
    results: dict = {}
    for kind in ("stream", "request"):
        for arm in arms:
            alone, beside, settling_calls, seconds = [], [], [], []
            connection = Connection("127.0.0.1", arm.port)
            for _ in range(rounds):
                for _ in range(max(50, len(beside) // max(1, len(seconds)))):
                    alone.append((await _one(arm, connection, CHAT, {})).total)
                transfer = _large_transfer(arm, kind, request_file, megabytes["stream"])
                started = time.perf_counter()
                while transfer.poll() is None:
                    beside.append((await _one(arm, connection, CHAT, {})).total)
                    await asyncio.sleep(0)
                seconds.append(time.perf_counter() - started)
                out, err = transfer.communicate()
                if out != "200":
                    raise RuntimeError(f"{arm.name}: the large {kind} failed: {out} {err}")
                arm.sent += 1
                settling = asyncio.ensure_future(settle(arm))
                while not settling.done():
                    settling_calls.append((await _one(arm, connection, CHAT, {})).total)
                    await asyncio.sleep(0)
                await settling
            await connection.close()
            results.setdefault(kind, {})[arm.name] = {
                "alone": summary([_ms(t) for t in alone]),
                "beside": summary([_ms(t) for t in beside]),
                "worst_alone_ms": _ms(max(alone)),
                "worst_beside_ms": _ms(max(beside)),
                "worst_settling_ms": _ms(max(settling_calls, default=0.0)),
                "transfer_seconds": seconds,
            }
    return results


def _ms(seconds: float) -> float:
    return seconds * 1000


async def stored(db_path: Path, count: int, timeout: float = 120) -> None:
    """Until the meter's database holds `count` calls: the recorder is done with the last."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(db_path) as db:
            if db.execute("SELECT count(*) FROM interactions").fetchone()[0] >= count:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the meter stored fewer than {count} calls in {timeout:.0f} s")


# The proxy's cost per call, in CPU seconds of its processes (the meter's recorder
# included): the scenarios of issue 23, each run for M and P in the same window.
CPU_SCENARIOS: dict[str, dict] = {
    "c=1, zero delay": {"concurrency": 1, "headers": {}},
    "c=1, 200 ms upstream": {"concurrency": 1, "headers": {"x-mock-delay-ms": "200"}},
    "c=32, zero delay": {"concurrency": 32, "headers": {}},
}


async def paired_cpu(arms: list[Arm], requests: int, concurrency: int, headers: dict, settle) -> dict:
    """CPU ms per call of each arm over `requests` calls, the arms loaded in the same
    window: at c=1 with no upstream delay one call per arm in turn, else side by side
    with `concurrency` keep-alive clients each. The window ends once every arm is
    done with its calls (`await settle(arm)`: the meter has stored them), so the
    recorder's share is in."""
    connections = {arm.name: [Connection("127.0.0.1", arm.port) for _ in range(concurrency)] for arm in arms}
    for arm in arms:  # connections open and code warm before the window
        for connection in connections[arm.name]:
            await _one(arm, connection, CHAT, headers)
        await settle(arm)
    before = {arm.name: arm.cpu_seconds() for arm in arms}
    if concurrency == 1 and not headers.get("x-mock-delay-ms"):
        for _ in range(requests):
            for arm in random.sample(arms, len(arms)):
                await _one(arm, connections[arm.name][0], CHAT, headers)
    else:

        async def load(arm: Arm) -> None:
            left = [requests]

            async def worker(connection: Connection) -> None:
                while left[0] > 0:
                    left[0] -= 1
                    await _one(arm, connection, CHAT, headers)

            await asyncio.gather(*(worker(connection) for connection in connections[arm.name]))

        await asyncio.gather(*(load(arm) for arm in arms))
    for arm in arms:
        await settle(arm)
    spent = {arm.name: arm.cpu_seconds() - before[arm.name] for arm in arms}
    for arm in arms:
        for connection in connections[arm.name]:
            await connection.close()
    return {name: {"requests": requests, "cpu_ms_per_request": seconds * 1000 / requests} for name, seconds in spent.items()}


async def idle_cpu(arms: list[Arm], seconds: float) -> dict:
    """Each arm's CPU use while no call comes, in % of one core."""
    before, started = {arm.name: arm.cpu_seconds() for arm in arms}, time.perf_counter()
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - started
    return {arm.name: (arm.cpu_seconds() - before[arm.name]) * 100 / elapsed for arm in arms}


def load_average() -> float:
    """The machine's 1-minute load average, context for every CPU figure."""
    return os.getloadavg()[0]
