"""Interaction IDs: short, typeable, time-sortable, unique across processes.

An ID is 12 characters of Crockford base32 (lowercase, no i/l/o/u): 8 for the
time in centiseconds since 2025-01-01 (good for 11,000 years) and 4 random ones
(20 bits). Within one process, IDs made in the same centisecond increment the
random part, so they stay unique and ordered; two proxies writing one database
collide only if they draw the same 20 bits in the same centisecond.
"""

import secrets
import threading
import time

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_EPOCH = 1735689600  # 2025-01-01T00:00:00Z
_TIME_CHARS = 8
_RANDOM_CHARS = 4
_RANDOM_SPACE = 32**_RANDOM_CHARS
LENGTH = _TIME_CHARS + _RANDOM_CHARS


def _encode(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 32)
        chars.append(ALPHABET[digit])
    return "".join(reversed(chars))


class IdGenerator:
    """Monotonic within a process: each ID sorts after the one before."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_time = -1
        self._last_random = 0

    def new(self) -> str:
        with self._lock:
            centis = int((time.time() - _EPOCH) * 100)
            if centis <= self._last_time:
                centis = self._last_time
                self._last_random += 1
                if self._last_random >= _RANDOM_SPACE:
                    centis += 1
                    self._last_random = secrets.randbelow(_RANDOM_SPACE // 2)
            else:
                # Start in the lower half so increments rarely overflow.
                self._last_random = secrets.randbelow(_RANDOM_SPACE // 2)
            self._last_time = centis
            return _encode(centis, _TIME_CHARS) + _encode(self._last_random, _RANDOM_CHARS)


new_id = IdGenerator().new


def normalise_prefix(text: str) -> str:
    """IDs are case-insensitive; Crockford readers also map o->0 and i/l->1."""
    return text.strip().lower().translate(str.maketrans("oil", "011"))


def is_valid_prefix(text: str) -> bool:
    return 0 < len(text) <= LENGTH and all(c in ALPHABET for c in text)
