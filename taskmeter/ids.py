"""Interaction IDs: short, typeable, time-sortable, unique across processes, and
checked, so a one-character typo fails instead of naming another call.

An ID is 13 characters of Crockford base32 (lowercase, no i/l/o/u): 8 for the
time in centiseconds since 2025-01-01 (good for 11,000 years), 4 random ones
(20 bits) and a check character. Within one process, IDs made in the same
centisecond increment the random part, so they stay unique and ordered; two
proxies writing one database collide only if they draw the same 20 bits in the
same centisecond.

The check character is a weighted sum of the 12 others, mod 32, with odd
weights: changing any one character always changes it, and swapping two
neighbours changes it unless they differ by exactly 16. IDs made before the
check character existed (12 characters) stay valid.
"""

import threading
import time
from random import SystemRandom  # not secrets: it loads hashlib (OpenSSL), milliseconds for every command

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_VALUES = {char: value for value, char in enumerate(ALPHABET)}
_EPOCH = 1735689600  # 2025-01-01T00:00:00Z
_TIME_CHARS = 8
_RANDOM_CHARS = 4
_RANDOM_SPACE = 32**_RANDOM_CHARS
BODY_LENGTH = _TIME_CHARS + _RANDOM_CHARS
LENGTH = BODY_LENGTH + 1
# Shorter prefixes name a stretch of about five minutes, not a call.
MIN_PREFIX = 6
_WEIGHTS = tuple(2 * position + 1 for position in range(BODY_LENGTH))

# What secrets.randbelow draws from: the operating system's randomness.
_system_random = SystemRandom()


def _encode(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 32)
        chars.append(ALPHABET[digit])
    return "".join(reversed(chars))


def check_char(body: str) -> str:
    """The check character of an ID's first 12 characters."""
    return ALPHABET[sum(weight * _VALUES[char] for weight, char in zip(_WEIGHTS, body, strict=True)) % 32]


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
                    self._last_random = _system_random.randrange(_RANDOM_SPACE // 2)
            else:
                # Start in the lower half so increments rarely overflow.
                self._last_random = _system_random.randrange(_RANDOM_SPACE // 2)
            self._last_time = centis
            body = _encode(centis, _TIME_CHARS) + _encode(self._last_random, _RANDOM_CHARS)
        return body + check_char(body)


new_id = IdGenerator().new


def derived_id(moment: float, key: str) -> str:
    """The same ID every time for the same `key` at the same `moment` (epoch
    seconds): the random part is drawn from the key's hash, so importing a
    record twice (`meter reconcile --import`) names the same call."""
    import hashlib  # only `meter reconcile --import` derives IDs: the other commands start without OpenSSL

    centis = int((moment - _EPOCH) * 100)
    drawn = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:4]) % _RANDOM_SPACE
    body = _encode(centis, _TIME_CHARS) + _encode(drawn, _RANDOM_CHARS)
    return body + check_char(body)


def normalise_prefix(text: str) -> str:
    """IDs are case-insensitive; Crockford readers also map o->0 and i/l->1."""
    return text.strip().lower().translate(str.maketrans("oil", "011"))


def prefix_problem(prefix: str) -> str | None:
    """Why a normalised reference cannot name a call, or None when it can."""
    if not prefix or len(prefix) > LENGTH or any(char not in ALPHABET for char in prefix):
        return f"IDs are {LENGTH} letters and digits (older ones {BODY_LENGTH}), as `meter log` shows them"
    if len(prefix) < MIN_PREFIX:
        return f"give at least {MIN_PREFIX} characters of it"
    if len(prefix) == LENGTH and check_char(prefix[:BODY_LENGTH]) != prefix[-1]:
        return "its last character does not check: a character is mistyped"
    return None
