"""The dashboard's Team page (docs/team.md, docs/dashboard.md): a phase of the
team store with each developer's tokens, cost, working time and flags, and the
tasks that ran over their estimate, computed by the same report code."""

from taskmeter.errors import MeterError


def team_page(phase_id: str | None, idle_seconds: float, config_path: str | None = None) -> dict:
    from taskmeter.analytics.history import phase_ids
    from taskmeter.analytics.reports import phase_report
    from taskmeter.team.address import describe
    from taskmeter.team.reports import configured_url, team_database, with_developers

    try:
        url = configured_url(config_path)
    except MeterError as exc:
        return {"store": None, "problem": str(exc), "report": None}
    with team_database(url, phases=[]) as db:  # tasks and phases only: which phases there are
        ordered = phase_ids(db)
    if not ordered:
        return {"store": describe(url), "problem": None, "phase_ids": [], "report": None}
    chosen = (phase_id or ordered[-1]).upper()
    if chosen not in [phase.upper() for phase in ordered]:
        raise MeterError(f"the team store has no phase {chosen}")
    with team_database(url, phases=[chosen]) as db:
        report = phase_report(db, chosen, idle_seconds=idle_seconds)
        report = with_developers({"team": True}, report, db, idle_seconds, phase_id=report["phase_id"])
    over = [task for task in report["tasks"] if task["variance"] is not None and task["variance"] > 0]
    return {"store": describe(url), "problem": None, "phase_ids": ordered, "report": report, "over": over}
