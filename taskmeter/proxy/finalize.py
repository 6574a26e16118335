"""Turning a finished CapturedCall into an Interaction row. Runs in the recorder
process, never in the proxy's: this is where bodies are parsed, tokens
estimated and prices looked up."""

import json
import logging
import re
from collections import OrderedDict
from datetime import UTC, datetime

from taskmeter.proxy import estimate, pricing
from taskmeter.proxy.capture import CapturedCall
from taskmeter.proxy.conversation import conversation_id
from taskmeter.proxy.parse import BodyParser, ParseResult
from taskmeter.proxy.usage import Usage
from taskmeter.store.interactions import Interaction
from taskmeter.store.recording import Recorded
from taskmeter.timefmt import to_stored

log = logging.getLogger("taskmeter.proxy")

_SECRET_KEYS = re.compile(r'("(?:api[_-]?key|authorization|x-api-key|x-goog-api-key|key|token|secret)"\s*:\s*)"[^"]*"', re.I)


def redact(text: str) -> str:
    """Secrets that may sit inside a body (keys in JSON fields) are replaced."""
    return _SECRET_KEYS.sub(r'\1"[redacted]"', text)


def _stamp(moment: float | None) -> str | None:
    return None if moment is None else to_stored(datetime.fromtimestamp(moment, UTC))


def _json(body: bytes | None):
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


class Finalizer:
    """Stateful only for Responses API chains: response id -> conversation id."""

    def __init__(self, store_bodies: bool = False, proxy_id: str | None = None) -> None:
        self._store_bodies = store_bodies
        self._proxy_id = proxy_id  # which proxy recorded the call (several may share a database)
        self._responses: OrderedDict[str, str] = OrderedDict()

    def finish(self, call: CapturedCall) -> Recorded:
        request = _json(call.request_body)
        result = self._parse(call)
        if call.outcome == "partial" and result.finished:
            # The client hung up after the stream's own end marker: nothing was lost.
            call.outcome, call.error = "complete", None
        model = result.model or (request.get("model") if isinstance(request, dict) else None)
        if not model and call.protocol == "gemini":
            model = _gemini_model(call.endpoint)
        streamed = _streamed(call, request)
        usage, source, errors = self._usage(call, request, result, model)
        cost, price_source = (None, None)
        if usage is not None and call.operation != "count_tokens":
            cost, price_source = pricing.price(call.provider, model, usage)
        conversation = self._conversation(call.protocol, request, result.response_id)
        raw = dict(usage.raw) if usage is not None and usage.raw is not None else None
        if call.operation == "count_tokens" and result.counted_tokens is not None:
            raw = {"counted_input_tokens": result.counted_tokens}
        interaction = Interaction(
            id=call.id,
            task_id=call.task_id,
            attribution=call.attribution,
            started_at=_stamp(call.started),
            first_byte_at=_stamp(call.first_byte),
            ended_at=_stamp(call.ended),
            provider=call.provider,
            protocol=call.protocol,
            operation=call.operation,
            method=call.method,
            endpoint=call.endpoint,
            model=model,
            streamed=streamed,
            http_status=call.status,
            outcome=call.outcome,
            error="; ".join(errors) or None,
            input_total=usage.input_total if usage else None,
            cache_read=usage.cache_read if usage else None,
            cache_write=usage.cache_write if usage else None,
            output_total=usage.output_total if usage else None,
            reasoning=usage.reasoning if usage else None,
            usage_source=source,
            raw_usage=json.dumps(raw, separators=(",", ":")) if raw is not None else None,
            cost_usd=cost,
            price_source=price_source,
            conversation_id=conversation,
            client=call.client,
            proxy_id=self._proxy_id,
        )
        finished = Recorded(interaction)
        if self._store_bodies:
            finished.request_body = redact(call.request_body.decode("utf-8", "replace")) if call.request_body else None
            finished.response_body = redact(bytes(call.response_body).decode("utf-8", "replace")) or None
        return finished

    @staticmethod
    def _parse(call: CapturedCall) -> ParseResult:
        parser = BodyParser(call.protocol, call.content_type, call.content_encoding)
        parser.feed(bytes(call.response_body))
        return parser.close()

    def _usage(self, call, request, result: ParseResult, model) -> tuple[Usage | None, str | None, list[str]]:
        errors = list(call.error and [call.error] or [])
        errors += result.errors
        if result.parse_error:
            errors.append(f"unparsed response body: {result.parse_error}")
        if call.response_truncated:
            errors.append("response body over the parse limit; usage may be missing")
        cut_short = call.outcome != "complete"
        if result.usage is not None:
            return result.usage, "partial" if cut_short and not result.finished else "reported", errors
        succeeded = call.status is not None and 200 <= call.status < 300
        if call.operation != "generate" or not succeeded:
            return None, None, errors
        # No usage from the provider: estimate what was sent and what arrived.
        try:
            usage = Usage(
                input_total=estimate.request_tokens(request, model),
                output_total=estimate.count_tokens(result.text, model),
                raw={"estimated_with": estimate.encoding_name(model)},
            )
        except Exception as exc:
            log.warning("meter: token estimate failed for %s: %s", call.id, exc)
            errors.append(f"token estimate failed: {exc}")
            return None, None, errors
        return usage, "partial" if cut_short else "estimated", errors

    def _conversation(self, protocol: str, request, response_id: str | None) -> str | None:
        conversation = None
        if isinstance(request, dict) and request.get("previous_response_id") in self._responses:
            conversation = self._responses[request["previous_response_id"]]
        if conversation is None:
            conversation = conversation_id(protocol, request)
        if response_id and conversation and protocol == "openai_responses":
            self._responses[response_id] = conversation
            while len(self._responses) > 10_000:
                self._responses.popitem(last=False)
        return conversation


def _streamed(call: CapturedCall, request) -> bool:
    if call.protocol == "gemini":
        return ":streamGenerateContent" in call.endpoint
    if call.protocol == "bedrock":
        return call.endpoint.split("?")[0].endswith("-stream")
    if call.protocol == "anthropic" and ":streamRawPredict" in call.endpoint:
        return True
    if isinstance(request, dict) and "stream" in request:
        return bool(request["stream"])
    return call.protocol == "ollama"  # Ollama streams unless told not to


def _gemini_model(endpoint: str) -> str | None:
    match = re.search(r"/models/([^/:?]+)", endpoint)
    return match.group(1) if match else None
