"""What counts as a secret, and its redaction wherever the meter keeps text.

Two rules, each defined once:
- a field or query parameter whose name is one of SECRET_NAMES (compared
  without case, `-` or `_`, so `api_key`, `apiKey` and `api-key` are one name;
  `max_tokens` or usage fields are never caught);
- a credential by its shape, anywhere in text: OpenAI `sk-…`, Anthropic
  `sk-ant-…`, Google `AIza…`, Groq `gsk_…`, GitHub `ghp_…`, AWS `AKIA…`.
"""

import re

REDACTED = "[redacted]"

SECRET_NAMES = frozenset(
    {
        "authorization",
        "apikey",
        "xapikey",
        "xgoogapikey",
        "key",
        "token",
        "accesstoken",
        "refreshtoken",
        "idtoken",
        "clientsecret",
        "password",
        "secret",
    }
)

_KEY_SHAPES = re.compile(
    r"sk-ant-[A-Za-z0-9_\-]{8,}"
    r"|sk-[A-Za-z0-9_\-]{16,}"
    r"|AIza[0-9A-Za-z_\-]{30,}"
    r"|gsk_[A-Za-z0-9]{20,}"
    r"|ghp_[A-Za-z0-9]{30,}"
    r"|AKIA[0-9A-Z]{16}"
)
_JSON_STRING_FIELD = re.compile(r'"([A-Za-z0-9_\-]{1,40})"(\s*:\s*)"((?:[^"\\]|\\.)*)"')


def is_secret_name(name: str) -> bool:
    return name.lower().replace("-", "").replace("_", "") in SECRET_NAMES


def redact(text: str) -> str:
    """`text` (a JSON body, an error message) with secret fields and key shapes replaced."""

    def field(match: re.Match) -> str:
        if is_secret_name(match.group(1)):
            return f'"{match.group(1)}"{match.group(2)}"{REDACTED}"'
        return match.group(0)

    return _KEY_SHAPES.sub(REDACTED, _JSON_STRING_FIELD.sub(field, text))
