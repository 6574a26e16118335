"""The dashboard's ASGI app: its pages, a live feed, the proxy's state, and the writes.

Pages build their numbers in a worker thread with their own sqlite3 connection
(pages.py); the feed polls through aiosqlite (feed.py); writes go through the
same store functions as `meter flag|unflag|retag|task|phase|mark` (edits.py),
behind access.py's checks.
"""

import secrets
import sqlite3
import threading
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from taskmeter import terminal
from taskmeter.analytics import budgets, formats
from taskmeter.analytics.budgets import Defaults
from taskmeter.analytics.metrics import NOT_YET, PHASE_SECTIONS, TASK_SECTIONS
from taskmeter.dashboard import edits, feed, pages
from taskmeter.dashboard.access import LOOPBACK_NAMES, AccessToken, SameOriginWrites, same_secret
from taskmeter.errors import MeterError, NotFound
from taskmeter.private import read_own_cache, write_own_cache
from taskmeter.store import alerts, calls, connection, interactions, tasks
from taskmeter.store.connection import write_transaction
from taskmeter.timefmt import format_duration
from taskmeter.userdirs import user_path

PACKAGE = files("taskmeter.dashboard")

# The pages the navigation bar names: (label, path, the templates it covers). A page is one line here.
NAVIGATION = [
    ("Now", "/", ("now",)),
    ("Tasks", "/tasks", ("tasks", "task")),
    ("Phases", "/phases", ("phases",)),
    ("History", "/history", ("history",)),
    ("Team", "/team", ("team",)),
]
# The retag list's choice that moves calls to no task (`meter retag --unassign`): not a task ID.
UNASSIGN = "unassigned"


def call_status(call: dict) -> str:
    """The status a call row shows: its HTTP status, then `failed` for a call that got no
    model answer (the `failed` of FAILED_CALL_SQL, whatever its outcome says), else its outcome."""
    word = "failed" if call["failed"] else call["outcome"]
    return " ".join(str(part) for part in (call["http_status"], word) if part is not None)


class CompiledTemplates(jinja2.BytecodeCache):
    """The templates as an earlier `meter ui` compiled them, in the user's cache folder: compiling
    them all costs about 100 ms of CPU, at start and on the first pages. jinja2 compiles again a
    template whose source (or Python) changed; a file another account could have written is not read."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        data = read_own_cache(self.folder / bucket.key)
        if data is not None:
            bucket.bytecode_from_string(data)

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        write_own_cache(self.folder / bucket.key, bucket.bytecode_to_string())


def _templates() -> Jinja2Templates:
    # Stored model text is untrusted: every template autoescapes.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(PACKAGE / "templates")),
        autoescape=True,
        bytecode_cache=CompiledTemplates(user_path("cache") / "templates"),
    )
    env.filters.update(
        moment=terminal.moment,  # short, as in the CLI's tables
        local_time=lambda stored: terminal.moment(stored, short=False),  # whole, with the offset
        number=terminal.number,
        money=terminal.money,
        duration=lambda seconds: format_duration(seconds) or "—",
        percent=lambda ratio: "—" if ratio is None else f"{ratio * 100:.1f}%",
        describe=lambda name, fields: formats.describe(name, fields) or "—",
        budget_line=budgets.describe,
        call_status=call_status,
        shown=edits.shown,
    )
    env.globals.update(
        task_sections=TASK_SECTIONS,
        phase_sections=PHASE_SECTIONS,
        not_yet=NOT_YET,
        navigation=NAVIGATION,
        unassign=UNASSIGN,
        task_fields=tasks.TASK_FIELDS,
        phase_fields=tasks.PHASE_FIELDS,
        task_milestones=[name for name in tasks.MILESTONES if name != "begin"],
        phase_milestones=list(tasks.PHASE_MILESTONES),
        success_values=tasks.SUCCESS_VALUES,
        on_exceeded_values=edits.ON_EXCEEDED,
    )
    return Jinja2Templates(env=env)


def create_app(
    db_path: Path,
    port: int,
    idle_seconds: float,
    budget_defaults: Defaults,
    access_token: str,
    stopping: threading.Event | None = None,
) -> Starlette:
    """The app for a dashboard on 127.0.0.1:`port` over the database at `db_path`,
    open to requests that carry `access_token` (access.AccessToken). Setting
    `stopping` ends the live feeds (server.StoppingServer sets it on Ctrl-C)."""
    templates = _templates()
    # The forms' token, per run: a form from an earlier run, or elsewhere, is refused. It is
    # not the access token, which pages never show (its cookie is HttpOnly).
    token = secrets.token_urlsafe(32)

    async def in_thread(build: Callable, *args):
        """`build(db, *args)` in a worker thread, on a connection of its own."""

        def work():
            db = connection.connect(db_path, create=False)
            try:
                return build(db, *args)
            except sqlite3.Error as exc:
                raise connection.describe_sqlite_error(exc, db_path) from None
            finally:
                db.close()

        return await run_in_threadpool(work)

    async def page_data(build: Callable, *args) -> dict:
        """A page's data, with the proxy's state for the navigation bar."""

        def with_proxy(db, *args):
            return {**build(db, *args), "proxy": pages.proxy_state(db, db_path)}

        return await in_thread(with_proxy, *args)

    # A template's macros are attributes jinja2 sets at run time, unknown to its types.
    call_row = templates.env.get_template("macros.html").module.call_row  # type: ignore[attr-defined]

    def feed_row(call: dict) -> str:
        return str(call_row(call, token, "/"))

    def render(request: Request, name: str, context: dict, status: int = 200) -> Response:
        return templates.TemplateResponse(request, name, {"token": token, "page": name.removesuffix(".html"), **context}, status)

    async def now_page(request: Request) -> Response:
        day = pages.chart_day(request.query_params.get("day"))
        return render(request, "now.html", await page_data(pages.now_page, idle_seconds, budget_defaults, day))

    async def phases_page(request: Request, refusal: dict | None = None) -> Response:
        phase_id = request.path_params.get("phase_id")
        phase_id = tasks.validate_phase_id(phase_id) if phase_id is not None else None
        data = await page_data(pages.phases_page, phase_id, idle_seconds, budget_defaults)
        return render(request, "phases.html", {**data, **(refusal or {})}, 400 if refusal else 200)

    async def task_page(request: Request, refusal: dict | None = None) -> Response:
        task_id = tasks.validate_task_id(request.path_params["task_id"])
        data = await page_data(pages.task_page, task_id, idle_seconds)
        return render(request, "task.html", {**data, **(refusal or {})}, 400 if refusal else 200)

    async def tasks_page(request: Request) -> Response:
        query = request.query_params
        first = pages.local_day(query["from"], "from") if query.get("from") else None
        last = pages.local_day(query["to"], "to") if query.get("to") else None
        status = query.get("status", "")
        if status not in ("", "open", "approved"):
            raise MeterError(f"status must be open or approved, not {status[:24]!r}")
        data = await page_data(pages.tasks_page, idle_seconds, first, last, query.get("search", ""), status)
        return render(request, "tasks.html", data)

    async def call_page(request: Request) -> Response:
        return render(request, "call.html", await page_data(pages.call_page, request.path_params["interaction_id"]))

    async def proxy_state(request: Request) -> Response:
        return JSONResponse(await in_thread(pages.proxy_state, db_path), headers={"cache-control": "no-store"})

    async def team_page(request: Request) -> Response:
        from taskmeter.team.page import team_page as build  # psycopg only for this page

        phase_id = request.path_params.get("phase_id")
        phase_id = tasks.validate_phase_id(phase_id) if phase_id is not None else None
        return render(request, "team.html", await run_in_threadpool(build, phase_id, idle_seconds))

    async def history_page(request: Request) -> Response:
        period = request.query_params.get("period", "daily")
        if period not in pages.USAGE_PERIODS:
            raise MeterError(f"no such period {period!r}: daily, weekly or monthly")
        return render(request, "history.html", await page_data(pages.history_page, period))

    async def form(request: Request) -> dict:
        """The posted form, once its token is this run's."""
        fields = await request.form()
        if not same_secret(str(fields.get("token", "")), token):
            raise HTTPException(403, "this form is not from this dashboard (reload the page)")
        return {key: str(value) for key, value in fields.items()}

    def back(fields: dict) -> RedirectResponse:
        """Back to the page the form was on: a path on this dashboard only."""
        target = fields.get("back", "/")
        if not target.startswith("/") or target.startswith("//"):
            target = "/"
        return RedirectResponse(target, status_code=303)

    async def flag(request: Request) -> Response:
        fields = await form(request)
        note = fields.get("note", "").strip() or None

        def write(db):  # resolve_id refuses what cannot be an ID (400) and says which it does not know (404)
            interactions.flag(db, interactions.resolve_id(db, request.path_params["interaction_id"]), note)

        await in_thread(write)
        return back(fields)

    async def unflag(request: Request) -> Response:
        fields = await form(request)
        await in_thread(interactions.unflag, request.path_params["interaction_id"])
        return back(fields)

    async def retag_chosen(request: Request) -> Response:
        """Several calls at once, to a task picked from a list, in one transaction."""
        fields = await form(request)
        chosen = [str(value) for value in (await request.form()).getlist("call")]
        if not chosen:
            raise MeterError("tick the calls to move first")
        target = fields.get("task_id", "").strip()
        if not target:
            raise MeterError("choose the task to move the calls to")
        task_id = None if target == UNASSIGN else tasks.validate_task_id(target)

        def write(db):
            with write_transaction(db):
                calls.retag(db, [interactions.resolve_id(db, reference) for reference in chosen], task_id)

        await in_thread(write)
        return back(fields)

    def record_write(scope: str, write: Callable, show: Callable):
        """A write from the `scope` page (edits.edit or edits.mark): refused, the same page
        again with one line saying why and the boxes as the person left them; nothing changed."""

        async def endpoint(request: Request) -> Response:
            fields = await form(request)
            target = request.path_params[f"{scope}_id"]
            target = tasks.validate_task_id(target) if scope == "task" else tasks.validate_phase_id(target)
            try:
                await in_thread(write, scope, target, fields)
            except NotFound:
                raise
            except MeterError as exc:
                return await show(request, {"refusal": str(exc), "posted": fields})
            return RedirectResponse(f"/{scope}s/{target}#{fields.get('section', 'record')}", status_code=303)

        return endpoint

    async def clear_alert(request: Request) -> Response:
        fields = await form(request)
        await in_thread(alerts.clear, [feed.row_number(request.path_params["alert_id"], "an alert ID")])
        return back(fields)

    async def refused(request: Request, exc: Exception) -> Response:
        status = 404 if isinstance(exc, NotFound) else 400
        if isinstance(exc, HTTPException):
            status, message = exc.status_code, exc.detail
        else:
            message = str(exc)
        return render(request, "error.html", {"message": message}, status)

    routes = [
        Route("/", now_page),
        Route("/phases", phases_page),
        Route("/phases/{phase_id}", phases_page),
        Route("/phases/{phase_id}/edit", record_write("phase", edits.edit, phases_page), methods=["POST"]),
        Route("/phases/{phase_id}/mark", record_write("phase", edits.mark, phases_page), methods=["POST"]),
        Route("/tasks", tasks_page),
        Route("/tasks/{task_id}", task_page),
        Route("/tasks/{task_id}/edit", record_write("task", edits.edit, task_page), methods=["POST"]),
        Route("/tasks/{task_id}/mark", record_write("task", edits.mark, task_page), methods=["POST"]),
        Route("/history", history_page),
        Route("/team", team_page),
        Route("/team/{phase_id}", team_page),
        Route("/proxy", proxy_state),
        Route("/feed", feed.endpoint(db_path, feed_row, stopping or threading.Event())),
        Route("/calls/retag", retag_chosen, methods=["POST"]),
        Route("/calls/{interaction_id}", call_page),
        Route("/calls/{interaction_id}/flag", flag, methods=["POST"]),
        Route("/calls/{interaction_id}/unflag", unflag, methods=["POST"]),
        Route("/alerts/{alert_id}/clear", clear_alert, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(PACKAGE / "static")), name="static"),
    ]
    middleware = [
        # DNS rebinding: a page of another name that resolves to 127.0.0.1 is refused.
        Middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK_NAMES)),
        Middleware(SameOriginWrites, origins=[f"http://{name}:{port}" for name in LOOPBACK_NAMES]),
        # Other users of the machine reach 127.0.0.1 too: every request needs this run's token.
        Middleware(AccessToken, token=access_token, port=port),
    ]
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={MeterError: refused, HTTPException: refused},
    )
