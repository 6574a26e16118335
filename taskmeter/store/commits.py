"""Commits the git hooks saw (automation/git.py decides what they mean)."""

import sqlite3

from taskmeter.store.connection import write_transaction


def record_commit(
    db: sqlite3.Connection,
    sha: str,
    repo: str,
    branch: str | None,
    task_id: str | None,
    committed_at: str,
    files: int,
    insertions: int,
    deletions: int,
) -> None:
    """Store a commit; one stored before (its hook ran twice) is kept as it was."""
    with write_transaction(db):
        db.execute(
            "INSERT OR IGNORE INTO commits (sha, repo, branch, task_id, committed_at, files, insertions, deletions)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (sha, repo, branch, task_id, committed_at, files, insertions, deletions),
        )


def shas_of_task(db: sqlite3.Connection, task_id: str, repo: str) -> list[str]:
    return [row["sha"] for row in db.execute("SELECT sha FROM commits WHERE task_id = ? AND repo = ?", (task_id, repo))]


def last_commits_of_open_tasks(db: sqlite3.Connection, repo: str) -> list[sqlite3.Row]:
    """(task_id, sha) of the last commit in `repo` of each task not approved:
    the commits whose merge into the main branch approves their task."""
    return db.execute(
        "SELECT c.task_id, c.sha FROM commits c JOIN tasks t ON t.id = c.task_id"
        " WHERE c.repo = ? AND t.final_approval_at IS NULL AND c.committed_at = ("
        "   SELECT max(committed_at) FROM commits WHERE task_id = c.task_id AND repo = c.repo)"
        # After a reopen: a commit of that second or later (git's times are whole seconds),
        # and never the one whose merge approved it before.
        " AND c.committed_at >= coalesce((SELECT substr(max(reopened_at), 1, 19) FROM task_approvals WHERE task_id = c.task_id), '')"
        " AND NOT EXISTS (SELECT 1 FROM automatic_marks m WHERE m.task_id = c.task_id AND m.milestone = 'approved'"
        "   AND m.source LIKE 'commit ' || substr(c.sha, 1, 12) || ' %')",
        (repo,),
    ).fetchall()
