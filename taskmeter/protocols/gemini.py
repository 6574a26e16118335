"""Gemini: generateContent, streamGenerateContent (SSE with `alt=sse`, else a
streamed JSON array) and countTokens. The model is named in the path. Gemini CLI
names its session only on the Code Assist API (Google login), in the envelope's
request.session_id; with an API key it sends none (its
`x-gemini-api-privileged-user-id` header names the installation, not a session)."""

import json
import re

from taskmeter.protocols.conversation import first_user
from taskmeter.protocols.provider_errors import CAUSES
from taskmeter.protocols.record import COUNT_TOKENS, GENERATE, Protocol
from taskmeter.protocols.texts import Turns, one_line, tool_call_line, tool_result_line, typed
from taskmeter.protocols.usage import Accumulator, Stated, Usage
from taskmeter.store.interactions import token_count


def gemini_usage(metadata: dict) -> Usage:
    """Gemini omits zero counts; thoughts and tool-use prompts sit outside
    candidates and prompt but are billed, so they join output and input."""
    stated = Stated(metadata)
    thoughts = stated.count("thoughtsTokenCount", absent=0)
    return stated.usage_of(
        input_total=stated.total(
            "input_total", stated.count("promptTokenCount", absent=0), stated.count("toolUsePromptTokenCount", absent=0)
        ),
        cache_read=stated.count("cachedContentTokenCount", absent=0),
        cache_write=0,
        output_total=stated.total("output_total", stated.count("candidatesTokenCount", absent=0), thoughts),
        reasoning=thoughts,
    )


class Gemini(Accumulator):
    """generateContent / streamGenerateContent: every chunk carries a cumulative
    usageMetadata snapshot; the last one is the total."""

    _usage: dict | None = None

    def on_event(self, name, payload):
        if not isinstance(payload, dict):
            return
        if "totalTokens" in payload and "candidates" not in payload:  # :countTokens
            self.counted_tokens = token_count(payload["totalTokens"])
            return
        self._note_model(payload.get("modelVersion"))
        self.response_id = payload.get("responseId") or self.response_id
        self._note_error(payload.get("error"))
        if isinstance(payload.get("usageMetadata"), dict):
            self._usage = payload["usageMetadata"]
        for candidate in payload.get("candidates") or ():
            if not isinstance(candidate, dict):
                continue
            for part in (candidate.get("content") or {}).get("parts") or ():
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    self._said(part["text"])
                elif isinstance(part, dict) and isinstance(part.get("functionCall"), dict):
                    self._tool_call(part["functionCall"].get("name"), part["functionCall"].get("args") or {})
            if candidate.get("finishReason"):
                self.finished = True

    def usage(self):
        return gemini_usage(self._usage) if self._usage else None


def model_in_endpoint(endpoint: str) -> str | None:
    match = re.search(r"/models/([^/:?]+)", endpoint)
    return match.group(1) if match else None


def conversation_root(request: dict) -> object:
    return [request.get("systemInstruction") or request.get("system_instruction"), first_user(request.get("contents"))]


def request_turns(request: dict, turns: Turns) -> None:
    for content in request.get("contents") or ():
        if not isinstance(content, dict):
            continue
        typed_texts = []
        for part in content.get("parts") or ():
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("text"), str) and content.get("role", "user") == "user":
                typed_texts.append(part["text"])
            elif isinstance(part.get("text"), str):
                turns.step(one_line(f"assistant {part['text']}"))
            elif isinstance(part.get("functionCall"), dict):
                turns.step(tool_call_line(part["functionCall"].get("name"), part["functionCall"].get("args")))
            elif isinstance(part.get("functionResponse"), dict):
                turns.step(tool_result_line(json.dumps(part["functionResponse"].get("response"), ensure_ascii=False)))
        if typed_texts and typed("\n".join(typed_texts)):
            turns.typed("\n".join(typed_texts))


def error_body(status: int, cause: str, message: str) -> bytes:
    return json.dumps({"error": {"code": status, "message": message, "status": CAUSES[cause][3]}}).encode()


PROTOCOL = Protocol(
    name="gemini",
    paths={},
    verbs={"generatecontent": GENERATE, "streamgeneratecontent": GENERATE, "counttokens": COUNT_TOKENS},
    accumulator=Gemini,
    streamed=lambda endpoint, request: ":streamGenerateContent" in endpoint,
    conversation_root=conversation_root,
    request_turns=request_turns,
    loop_turns=lambda request: request.get("contents"),
    error_body=error_body,
    tail_usage=("usageMetadata", lambda usage: {"usageMetadata": usage}),
    model_in_endpoint=model_in_endpoint,
)
