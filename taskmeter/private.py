"""Files and folders that are the user's alone, whatever the umask: the data
(prompts), state (logs, pidfiles), config (which names commands to run and
where API keys go) and CA folders, and the files the meter writes in them.

A mode given to mkdir or open is masked by the umask, which only takes bits
away: 0700 and 0600 stay private under any umask. Parents that mkdir creates
get the plain umask instead, hence `private_dir`."""

import errno
import grp
import os
import pwd
import stat
from pathlib import Path

from taskmeter.errors import MeterError


def private_dir(path: Path) -> Path:
    """`path`, created 0700 with each parent it lacks; folders that exist are left as they are."""
    missing, folder = [], path
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:  # made meanwhile by another process
            pass
    if not path.is_dir():  # a file stands where the folder should be
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    return path


def private_file(path: Path) -> Path:
    """`path`, created 0600 if missing (and made 0600 if it is the meter's from an older
    version); open it as usual afterwards: its mode stays."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
    finally:
        os.close(descriptor)
    return path


def _private_group(gid: int) -> bool:
    """The user's own group (Debian's user private groups, which umask 002 assumes):
    named after the user, with no other member."""
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(gid)
    except KeyError:
        return False
    return group.gr_name == user and set(group.gr_mem) <= {user}


def refuse_if_others_may_write(path: Path, what: str) -> None:
    """A one-line error when another account could change the file at `path`: it, or its
    folder (which could swap it; a sticky folder such as /tmp cannot), is owned by someone
    else (root aside), writable by anyone, or writable by a group others belong to."""
    for checked, swappable in ((path, True), (path.resolve().parent, False)):
        status = os.stat(checked)
        if status.st_uid not in (os.getuid(), 0):
            raise MeterError(f"{what} {path}: {checked} belongs to another user (uid {status.st_uid}); refused")
        writable_by_others = status.st_mode & stat.S_IWOTH or (
            status.st_mode & stat.S_IWGRP and not _private_group(status.st_gid)
        )
        if writable_by_others and (swappable or not status.st_mode & stat.S_ISVTX):
            raise MeterError(
                f"{what} {path}: other users may change {checked} (mode {stat.S_IMODE(status.st_mode):04o}); "
                f"refused: `chmod go-w {checked}`"
            )


def read_own_cache(path: Path) -> bytes | None:
    """The bytes of a cache file the user's own `write_own_cache` kept; None when there is
    none, or none trustworthy: a file (or folder) another account could have written."""
    try:
        with open(path, "rb") as file:
            for status in (os.fstat(file.fileno()), path.parent.stat()):
                if status.st_uid != os.getuid() or status.st_mode & 0o022:
                    return None
            return file.read()
    except OSError:
        return None


def write_own_cache(path: Path, data: bytes) -> None:
    """Keep `data` at `path`, the user's alone, whole or not at all (a process reading it
    meanwhile sees the old file or the new one); quietly not, where the folder cannot be written."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        private_dir(path.parent)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except OSError:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass
