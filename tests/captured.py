"""A call as the proxy hands it to the recorder: an OpenAI chat completion, answered."""

import json
import time

from taskmeter.handover.call import CapturedCall


def chat_call(call_id: str, request: dict, response: bytes, **values) -> CapturedCall:
    """`request` sent to /v1/chat/completions and `response` received whole; `values`
    set any other field."""
    fields = dict(
        id=call_id,
        started=time.time(),
        provider="openai",
        protocol="openai_chat",
        operation="generate",
        method="POST",
        endpoint="/v1/chat/completions",
        status=200,
        content_type="application/json",
        outcome="complete",
        request_body=json.dumps(request).encode(),
    )
    call = CapturedCall(**{**fields, **values})
    call.response_body += response
    return call
