"""Turning a finished CapturedCall into an Interaction row. Runs in the recorder
process, never in the proxy's: this is where bodies are parsed, tokens
estimated and prices looked up."""

import json
import logging
from collections import OrderedDict
from datetime import UTC, datetime

from taskmeter import protocols
from taskmeter.analytics.alerts import loop_signatures
from taskmeter.handover.call import CapturedCall
from taskmeter.protocols.conversation import request_json, root_hash
from taskmeter.protocols.usage import Usage
from taskmeter.recorder import estimate, pricing
from taskmeter.recorder.parse import BodyParser, ParseResult
from taskmeter.recorder.texts import call_text
from taskmeter.secrets import redact
from taskmeter.store.calls import CallRow
from taskmeter.store.interactions import Interaction
from taskmeter.timefmt import to_stored

log = logging.getLogger(__name__)


def _stamp(moment: float | None) -> str | None:
    return None if moment is None else to_stored(datetime.fromtimestamp(moment, UTC))


class Finalizer:
    """Stateful only for Responses API chains: response id -> conversation root."""

    def __init__(self, store_bodies: str = "none", proxy_id: str | None = None) -> None:
        self._store_bodies = store_bodies  # see config: none, text or full
        self._proxy_id = proxy_id  # which proxy recorded the call (several may share a database)
        self._responses: OrderedDict[str, str] = OrderedDict()

    def finish(self, call: CapturedCall) -> CallRow:
        protocol = protocols.by_name(call.protocol)
        request = request_json(call.request_body)
        notes = [call.notes] if call.notes else []
        result = self._parse(call, notes)
        if call.outcome == "partial" and result.finished:
            # The client hung up after the stream's own end marker: nothing was lost.
            call.outcome, call.error = "complete", None
        requested = request.get("model") if isinstance(request, dict) else None
        if not requested and protocol.model_in_endpoint:
            requested = protocol.model_in_endpoint(call.endpoint)
        model = result.model or requested
        streamed = protocol.streamed(call.endpoint, request)
        usage, source, errors = self._usage(call, request, result, model, notes)
        if usage is not None:
            notes += usage.implausible
        cost, price_source = (None, None)
        if usage is not None and call.operation != "count_tokens":
            cost, price_source = pricing.price(call.provider, model, usage)
        root = self._root(protocol, request, result.response_id)
        raw = dict(usage.raw) if usage is not None and usage.raw is not None else None
        if call.operation == "count_tokens" and result.counted_tokens is not None:
            raw = {"counted_input_tokens": result.counted_tokens}
        interaction = Interaction(
            **self._as_captured(call),
            first_byte_at=_stamp(call.first_byte),
            model=model,
            streamed=streamed,
            error=redact("; ".join(errors)) or None,
            input_total=usage.input_total if usage else None,
            cache_read=usage.cache_read if usage else None,
            cache_write=usage.cache_write if usage else None,
            output_total=usage.output_total if usage else None,
            reasoning=usage.reasoning if usage else None,
            usage_source=source,
            raw_usage=json.dumps(raw, separators=(",", ":")) if raw is not None else None,
            cost_usd=cost,
            price_source=price_source,
            conversation_root=root,
            client_session=call.client_session or (protocol.session_in_request and protocol.session_in_request(request)),
            notes="; ".join(notes) or None,
            response_id=result.response_id if isinstance(result.response_id, str) else None,
        )
        finished = CallRow(interaction)
        finished.request_model = requested if isinstance(requested, str) else None
        finished.response_model = result.model if isinstance(result.model, str) else None
        if call.operation == "generate" and not call.blocked:
            turns = protocol.loop_turns(request) if isinstance(request, dict) else None
            finished.loop_signatures = tuple(loop_signatures(turns, model, result.tool_calls))
        if self._store_bodies in ("text", "full") and call.operation == "generate":
            finished.texts = call_text(call.protocol, request, result.answer, result.tool_calls).stored()
        if self._store_bodies == "full":
            finished.request_body = redact(call.request_body.decode("utf-8", "replace")) if call.request_body else None
            finished.response_body = redact(bytes(call.response_body).decode("utf-8", "replace")) or None
        return finished

    def _as_captured(self, call: CapturedCall) -> dict:
        """The columns taken as the proxy saw the call, before its body is read."""
        return dict(
            id=call.id,
            task_id=call.task_id,
            attribution=call.attribution,
            started_at=_stamp(call.started),
            ended_at=_stamp(call.ended),
            provider=call.provider,
            protocol=call.protocol,
            operation=call.operation,
            method=call.method,
            endpoint=call.endpoint,
            http_status=call.status,
            outcome=call.outcome,
            client=call.client,
            proxy_id=self._proxy_id,
            blocked=call.blocked,
            price_basis="api-equivalent" if call.subscription else "api",
        )

    @staticmethod
    def _parse(call: CapturedCall, notes: list[str]) -> ParseResult:
        parser = BodyParser(call.protocol, call.content_type, call.content_encoding)
        parser.feed(bytes(call.response_body))
        if call.response_tail:
            skipped = f"{call.response_skipped:,} bytes past the parse limit were not read"
            why = parser.feed_tail(bytes(call.response_tail))
            notes.append(f"{skipped}; usage may be missing: {why}" if why else f"{skipped}; usage read from the last bytes")
        return parser.close()

    def _usage(self, call, request, result: ParseResult, model, notes) -> tuple[Usage | None, str | None, list[str]]:
        errors = list(call.error and [call.error] or [])
        errors += result.errors
        if result.parse_error:
            errors.append(f"unparsed response body: {result.parse_error}")
        cut_short = call.outcome != "complete"
        if result.usage is not None:
            usage = result.usage
            if not cut_short or result.finished:
                return usage, "reported", errors
            # A cut stream states at most a running count (Anthropic's message_start
            # says 1): count what was delivered when that is more.
            delivered = _estimate(call, errors, lambda: estimate.count_tokens(result.text, model))
            if delivered is not None and (usage.output_total is None or delivered > usage.output_total):
                notes.append(f"output counted from the delivered text ({delivered}; the stream had stated {usage.output_total})")
                usage.output_total = delivered
            return usage, "partial", errors
        succeeded = call.status is not None and 200 <= call.status < 300
        if call.operation != "generate" or not succeeded:
            return None, None, errors
        # No usage from the provider: estimate what was sent and what arrived.
        usage = _estimate(
            call,
            errors,
            lambda: Usage(
                input_total=estimate.request_tokens(request, model),
                output_total=estimate.count_tokens(result.text, model),
                raw={"estimated_with": estimate.encoding_name(model)},
            ),
        )
        if usage is None:
            return None, None, errors
        return usage, "partial" if cut_short else "estimated", errors

    def _root(self, protocol: protocols.Protocol, request, response_id: str | None) -> str | None:
        root = None
        if isinstance(request, dict) and request.get("previous_response_id") in self._responses:
            root = self._responses[request["previous_response_id"]]
        if root is None:
            root = root_hash(protocol.name, request)
        if response_id and root and protocol.chains_responses:
            self._responses[response_id] = root
            while len(self._responses) > 10_000:
                self._responses.popitem(last=False)
        return root


def _estimate(call: CapturedCall, errors: list[str], compute):
    """`compute()`, a tiktoken estimate; None (and the reason in `errors`) if it fails."""
    try:
        return compute()
    except Exception as exc:
        log.warning("meter: token estimate failed for %s: %s", call.id, exc)
        errors.append(f"token estimate failed: {exc}")
        return None
