"""Token usage, as every protocol maps it to our inclusive columns, and the
accumulator each protocol reads a response's events with (its own reader and
accumulator are in its module).

The rules are those of docs/wire-formats.md, pinned by the recorded responses in
tests/recorded/: input_total includes cache reads and writes, output_total includes
reasoning. A count the protocol cannot state is None; a count the protocol omits
because it is zero (Gemini, Anthropic before caching, OpenAI details) is 0; a
count stated with a value no call can have is None, and noted (`Stated`).
"""

import json
from dataclasses import dataclass, field

from taskmeter.store.interactions import call_cost, shown, token_count


@dataclass(slots=True)
class Usage:
    input_total: int | None = None
    cache_read: int | None = None
    cache_write: int | None = None
    output_total: int | None = None
    reasoning: int | None = None
    raw: dict | None = None
    reported_cost: float | None = None  # the provider's own price of the call (OpenRouter's `cost`)
    # What the provider stated that cannot be real, one note each. A count stated
    # so is not reported (None), and the call is not priced.
    implausible: list[str] = field(default_factory=list)
    counts_nulled: bool = False


class Stated:
    """Reads a provider's usage object by the store's one rule of what a count can
    be (token_count): a value that cannot be real is not reported, and noted."""

    def __init__(self, usage: dict) -> None:
        self.usage = usage
        self.implausible: list[str] = []
        self.counts_nulled = False

    def count(self, key: str, within: dict | None = None, absent=None) -> int | None:
        """The count at `key` (of `within`, else of the usage object); `absent` when
        it is not stated (missing or null), None when it cannot be real."""
        value = (self.usage if within is None else within).get(key)
        if value is None:
            return absent
        count = token_count(value)
        if count is None:
            self._nulled(f"{key}: {shown(value)} is not a plausible count")
        return count

    def total(self, name: str, *parts: int | None) -> int | None:
        """The sum of `parts`: unknown when one is, and not real past the rule."""
        known = [part for part in parts if part is not None]
        if len(known) < len(parts):
            return None
        count = token_count(sum(known))
        if count is None:
            self._nulled(f"{name}: the sum {sum(known)} is not a plausible count")
        return count

    def usage_of(self, **counts) -> Usage:
        cost = self.usage.get("cost")
        reported = call_cost(cost)
        if cost is not None and reported is None:
            self.implausible.append(f"cost: {shown(cost)} is not a plausible cost of one call: not trusted")
        return Usage(
            **counts, raw=self.usage, reported_cost=reported, implausible=self.implausible, counts_nulled=self.counts_nulled
        )

    def _nulled(self, note: str) -> None:
        self.implausible.append(note)
        self.counts_nulled = True


def usage_details(usage: dict, key: str) -> dict:
    details = usage.get(key)
    return details if isinstance(details, dict) else {}


def openai_style_usage(usage: dict, prefix: str) -> Usage:
    """OpenAI's shape: cached tokens inside the prompt count, reasoning inside the
    completion count. Chat says prompt/completion, Responses input/output."""
    inputs, outputs = ("prompt", "completion") if prefix == "chat" else ("input", "output")
    prompt = usage_details(usage, f"{inputs}_tokens_details")
    completion = usage_details(usage, f"{outputs}_tokens_details")
    stated = Stated(usage)
    return stated.usage_of(
        input_total=stated.count(f"{inputs}_tokens"),
        cache_read=stated.count("cached_tokens", prompt, absent=0),
        cache_write=stated.count("cache_write_tokens", prompt, absent=0),
        output_total=stated.count(f"{outputs}_tokens"),
        reasoning=stated.count("reasoning_tokens", completion, absent=0),
    )


def cache_outside_input(stated: Stated, uncached: str, read: str, write: str, output: str, reasoning: int | None) -> Usage:
    """Anthropic's and Bedrock's shape: the input count excludes cache reads and
    writes, so they are added back to make input_total inclusive (and it is
    unknown when one of the three is)."""
    read_count = stated.count(read, absent=0)
    write_count = stated.count(write, absent=0)
    return stated.usage_of(
        input_total=stated.total("input_total", stated.count(uncached), read_count, write_count),
        cache_read=read_count,
        cache_write=write_count,
        output_total=stated.count(output),
        reasoning=reasoning,
    )


# ---------------------------------------------------------------- accumulators


def _error_text(error) -> str:
    if isinstance(error, dict):
        for key in ("message", "type", "code"):
            if error.get(key):
                return str(error[key])
        return json.dumps(error)[:500]
    return str(error)[:500]


@dataclass
class Accumulator:
    """Collects what a response says, event by event, for one protocol."""

    model: str | None = None
    response_id: str | None = None
    errors: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)  # everything the model wrote, for token estimates
    answer: list[str] = field(default_factory=list)  # its prose alone, for `meter show`
    tool_calls: list[list] = field(default_factory=list)  # [name, [argument pieces]] per tool call
    counted_tokens: int | None = None
    finished: bool = False
    events: int = 0

    def on_event(self, name: str, payload) -> None:
        raise NotImplementedError

    def usage(self) -> Usage | None:
        raise NotImplementedError

    def _note_error(self, error) -> None:
        if error:
            text = _error_text(error)
            if text not in self.errors:  # e.g. Responses' `error` repeated in `response.failed`
                self.errors.append(text)

    def _said(self, text: str) -> None:
        self.text.append(text)
        self.answer.append(text)

    def _tool_call(self, name, arguments=None) -> None:
        """A tool call starts (streams send its arguments in later pieces)."""
        self.tool_calls.append([name if isinstance(name, str) else None, []])
        if arguments is not None:
            self._tool_arguments(arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False))

    def _tool_arguments(self, piece: str) -> None:
        """A piece of the latest tool call's arguments (calls stream one after another)."""
        self.text.append(piece)
        if self.tool_calls:
            self.tool_calls[-1][1].append(piece)

    def _note_model(self, model) -> None:
        if isinstance(model, str) and model:
            self.model = model
