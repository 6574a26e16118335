"""What counts as a secret, and its redaction wherever the meter keeps text.

The rules, each defined once, here:
- a field whose name is one of SECRET_NAMES (compared without case, `-` or
  `_`, so `api_key`, `apiKey` and `api-key` are one name; `max_tokens` or
  usage fields are never caught): its value, whatever its type (a string, a
  number, an object, an array), becomes "[redacted]"; in JSON inside a JSON
  string too (a tool call's `arguments`);
- a query parameter whose name is one of SECRET_QUERY_NAMES (the field names,
  and `sig`, `signature`, `code` of signed URLs and OAuth redirects), in a
  request's path or in a URL anywhere in text;
- a credential by its shape, anywhere in text: OpenAI `sk-…`, Anthropic
  `sk-ant-…`, Google `AIza…`, Groq `gsk_…`, GitHub `github_pat_…` and
  `gh[oprsu]_…`, Slack `xox[abpr]-…`, Stripe `sk_live_…` / `rk_live_…`, AWS
  `AKIA…`, JWTs, PEM private-key blocks;
- an assignment `NAME=value` (as in a pasted .env, also `export NAME=value`
  and quoted values) whose NAME ends in PASSWORD, SECRET, TOKEN or KEY as a
  whole `_`-separated part (`DB_PASSWORD`, `GITHUB_TOKEN`, `API_KEY`; never
  `MAX_TOKENS` or `KEYBOARD`). NAME is upper-case anywhere in text, or of any
  case at the start of a line: so `sorted(x, key=len)` or `f(token=token)` in
  pasted code stay as they are.
"""

import json
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
# Only in query strings: as JSON fields, `code` and `signature` are ordinary words (a tool's code, an error's code).
SECRET_QUERY_NAMES = SECRET_NAMES | {"sig", "signature", "code", "xamzsignature", "xamzsecuritytoken"}

# The last `_`-separated part of a NAME=value that makes it a secret.
SECRET_SUFFIXES = ("PASSWORD", "SECRET", "TOKEN", "KEY")
_SECRET_SUFFIX = "|".join(SECRET_SUFFIXES)
# Where a word starts: after no letter, digit or `_`, or after a `\n`, `\r` or `\t` escaped in JSON.
_WORD_START = r"(?:(?<![A-Za-z0-9_])|(?<=\\[nrt]))"

# Each alternative starts with literal text, which keeps the scan of a large body fast.
_KEY_SHAPES = re.compile(
    r"sk-ant-[A-Za-z0-9_\-]{8,}"
    r"|sk-[A-Za-z0-9_\-]{16,}"
    r"|AIza[0-9A-Za-z_\-]{30,}"
    r"|gsk_[A-Za-z0-9]{20,}"
    r"|github_pat_[A-Za-z0-9_]{20,}"
    r"|gh[oprsu]_[A-Za-z0-9]{30,}"
    r"|xox[abpr]-[A-Za-z0-9\-]{10,}"
    r"|sk_live_[A-Za-z0-9]{16,}"
    r"|rk_live_[A-Za-z0-9]{16,}"
    r"|AKIA[0-9A-Z]{16}"
    # A JWT: base64url header (`{"` is `eyJ`), payload and signature.
    r"|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"
    # A PEM private key to its END line; cut short, as far as its base64 goes (`\n` escaped in JSON too).
    r"|-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?:[^\"]*?-----END [A-Z0-9 ]*PRIVATE KEY-----|(?:[A-Za-z0-9+/=\s]|\\[nr])*)"
)


# NAME of NAME=value, just before the `=`: upper-case anywhere, or of any case first on a line
# (also after a `\n` escaped in JSON), so that `sorted(x, key=len)` in pasted code stays.
_ASSIGNED_NAME = re.compile(
    rf"(?:{_WORD_START}(?:[A-Z][A-Z0-9_]*_)?(?:{_SECRET_SUFFIX})"
    rf"|(?im:(?:^|(?<=\\n))(?:export[ \t]+)?(?:[a-z][a-z0-9_]*_)?(?:{_SECRET_SUFFIX})))[ \t]*\Z"
)
_LONGEST_NAME = 100
# Its value: quoted (also with the quotes escaped, inside a JSON string), or up to a space, quote or
# backslash (which would start a JSON escape, to be kept whole). A `$VARIABLE` is no secret.
_ASSIGNED_VALUE = re.compile(r"""[ \t]*(?!\$)(?P<open>\\?["']?)(?P<value>(?<=["'])[^"'\\\n]+|(?<!["'])[^\s"'\\]+)(?P=open)""")
_QUERY_PARAMETER = re.compile(r"(?P<lead>[?&](?P<name>[A-Za-z0-9_\-]{1,40})=)(?P<value>[^&#\s\"'\\<>]+)")
# A field of JSON, or of JSON inside a JSON string (a tool call's `arguments`), its quotes escaped.
_JSON_FIELD = re.compile(r'(?P<escaped>\\?)"(?P<name>[A-Za-z0-9_\-]{1,40})(?P=escaped)"\s*:\s*')
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"?')
_JSON_SCALAR = re.compile(r"[^,}\]\s]*")
# In JSON inside a JSON string: a string (its own escapes doubled), a scalar, or else the rest of the outer string.
_ESCAPED_STRING = re.compile(r'\\"(?:\\\\(?:\\.|[^"\\])|\\[^"\\]|[^"\\])*(?:\\")?')
_ESCAPED_SCALAR = re.compile(r"-?[0-9][0-9.eE+\-]*|true|false|null")
_REST_OF_STRING = re.compile(r'(?:\\.|[^"\\])*')
_DECODER = json.JSONDecoder()


def _normalised(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def is_secret_name(name: str) -> bool:
    """A field (JSON, header) whose value is a secret."""
    return _normalised(name) in SECRET_NAMES


def is_secret_query_name(name: str) -> bool:
    """A query parameter whose value is a secret."""
    return _normalised(name) in SECRET_QUERY_NAMES


def _value_end(text: str, start: int) -> int:
    """Where the JSON value at `start` ends."""
    try:
        return _DECODER.raw_decode(text, start)[1]
    except ValueError:  # cut short, or not JSON: a string to its end, an object or array to the text's end
        if text.startswith(("{", "["), start):
            return len(text)
        found = (_JSON_STRING if text.startswith('"', start) else _JSON_SCALAR).match(text, start)
        assert found is not None  # each matches at its start: a quote, or anything (the scalar may be empty)
        return found.end()


def _escaped_value_end(text: str, start: int) -> int:
    """Where the value at `start` of JSON inside a JSON string ends."""
    found = _ESCAPED_STRING.match(text, start) or _ESCAPED_SCALAR.match(text, start) or _REST_OF_STRING.match(text, start)
    assert found is not None  # the rest of the string may be empty, so it always matches
    return found.end()


def _secret_values(text: str) -> str:
    """`text` with the value of every secret JSON field replaced, whatever its type."""
    parts, done = [], 0
    for match in _JSON_FIELD.finditer(text):
        start = match.end()
        if start < done or not is_secret_name(match["name"]):
            continue
        quote = match["escaped"] + '"'
        end = _escaped_value_end(text, start) if match["escaped"] else _value_end(text, start)
        if end > start:
            parts += [text[done:start], f"{quote}{REDACTED}{quote}"]
            done = end
    return "".join(parts) + text[done:] if parts else text


def _secret_assignments(text: str) -> str:
    """`text` with the value of every secret NAME=value replaced. It looks at each `=`
    (rare in a body) rather than running a pattern at every character."""
    parts, done = [], 0
    sign = text.find("=")
    while sign != -1:
        before = text[max(done, sign - 12) : sign].rstrip(" \t").upper()
        if before.endswith(SECRET_SUFFIXES) and _ASSIGNED_NAME.search(text, max(done, sign - _LONGEST_NAME), sign):
            value = _ASSIGNED_VALUE.match(text, sign + 1)
            if value:
                parts += [text[done : value.start("value")], REDACTED]
                done = value.end("value")
        sign = text.find("=", max(sign + 1, done))
    return "".join(parts) + text[done:] if parts else text


def _query_parameter(match: re.Match) -> str:
    return match["lead"] + REDACTED if is_secret_query_name(match["name"]) else match[0]


def redact(text: str) -> str:
    """`text` (a JSON body, an SSE stream, a prompt, an error message) with secret
    fields, secret query parameters, key shapes and secret assignments replaced."""
    text = _secret_values(text)
    text = _QUERY_PARAMETER.sub(_query_parameter, text)
    text = _secret_assignments(text)
    return _KEY_SHAPES.sub(REDACTED, text)
