"""Errors a user can act on.

Anything raised as a MeterError reaches the terminal as one line and exit status 1;
the message must say what was wrong and, where it can, what to do about it.
"""


class MeterError(Exception):
    """A failure caused by input or environment, reported to the user in one line."""


class NotFound(MeterError):
    pass


class Ambiguous(MeterError):
    """A reference that names more than one thing; `candidates` are lines that tell them apart."""

    def __init__(self, message: str, candidates: list[str] | None = None) -> None:
        super().__init__(message)
        self.candidates = candidates or []
