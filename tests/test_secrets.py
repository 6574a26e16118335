"""No credential reaches the database, whatever field or text it hides in, and
the files that may hold prompts are the user's alone."""

import json
import os
import stat

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskmeter.handover import callfile
from taskmeter.secrets import SECRET_NAMES, is_secret_name, is_secret_query_name, redact
from tests.fake_upstream import FakeUpstream, Scenario
from tests.proxy_harness import RunningProxy, write_config

# One of each shape, as a user pastes them into prompts and tool arguments.
KEY_SHAPES = [
    "sk-proj-Abc123Def456Ghi789Jkl0",
    "sk-ant-api03-Zyx987Wvu654Tsr321",
    "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6",
    "gsk_Q1w2E3r4T5y6U7i8O9p0A1s2",
    "ghp_1234567890abcdefABCDEF1234567890ab",
    "AKIAIOSFODNN7EXAMPLE",
    "github_pat_11ABCDEFG0aBcDeFgHiJkL_mNoPqRsTuVwXyZ0123456789abcdefghijklmnopqrstuv",
    "gho_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
    "ghs_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
    "ghu_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
    "xoxb-1234567890-0987654321-aBcDeFgHiJkLmNoP",
    "xoxp-1234567890-0987654321-aBcDeFgHiJkLmNoQ",
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "rk_live_51H8aBcDeFgHiJkLmNoPqRsT",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\nVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n-----END RSA PRIVATE KEY-----",
]
# Lines of a pasted .env, and what each keeps: the name, never the value.
DOTENV = {
    "DATABASE_PASSWORD=dotenv-value-1": "DATABASE_PASSWORD=[redacted]",
    'export GITHUB_TOKEN="dotenv value 2"': 'export GITHUB_TOKEN="[redacted]"',
    "STRIPE_SECRET='dotenv-value-3'": "STRIPE_SECRET='[redacted]'",
    "OPENAI_API_KEY = dotenv-value-4": "OPENAI_API_KEY = [redacted]",
    "db_password=dotenv-value-5": "db_password=[redacted]",
    "export session_token=dotenv-value-6": "export session_token=[redacted]",
}
SECRET_FIELDS = {
    "authorization": "Bearer field-value-1",
    "api_key": "field-value-2",
    "apiKey": "field-value-3",
    "access_token": "field-value-4",
    "refresh_token": "field-value-5",
    "id_token": "field-value-6",
    "client_secret": "field-value-7",
    "password": "field-value-8",
    "secret": "field-value-9",
}
# Secret fields whose values are not strings: the whole value goes.
SECRET_NON_STRINGS = {"token": 918273645, "password": {"nested": "field-value-10"}, "key": ["field-value-11", 42]}
# Query parameters of signed URLs and OAuth redirects.
SECRET_QUERY = {"sig": "query-value-1", "signature": "query-value-2", "code": "query-value-3", "key": "query-value-4"}
# What looks a little like a secret and is not one: each stays as it is.
NOT_SECRETS = [
    "max_tokens=100",
    "MAX_TOKENS=100",
    "KEYBOARD=us",
    "ENDPOINT_KEYS=3",
    "sorted(items, key=len)",
    "client = Client(token=token)",
    "monkey=1",
    "X=$API_KEY",
    '"prompt_tokens": 5',
    '"code": "print(1)"',
    '"signature": "Yours, Ann"',
    "sk-short",
    "ghp_short",
    "xoxb-1",
    "sk_test_",
    "eyJhbGciOi",
    "a.b.c",
    "-----BEGIN CERTIFICATE-----",
    "https://example.com/?page=2&sort=key",
]


def test_redaction_takes_exact_names_and_key_shapes_but_not_token_counts():
    body = json.dumps(
        {
            **SECRET_FIELDS,
            **SECRET_NON_STRINGS,
            "max_tokens": 100,
            "usage": {"prompt_tokens": 5},
            "text": " ".join(KEY_SHAPES),
            "env": "\n".join(DOTENV),
        }
    )
    redacted = json.loads(redact(body))
    assert all(redacted[name] == "[redacted]" for name in {**SECRET_FIELDS, **SECRET_NON_STRINGS})
    assert redacted["max_tokens"] == 100 and redacted["usage"] == {"prompt_tokens": 5}
    assert redacted["text"] == " ".join(["[redacted]"] * len(KEY_SHAPES))
    assert redacted["env"] == "\n".join(DOTENV.values())


@pytest.mark.parametrize("shape", KEY_SHAPES)
def test_each_key_shape_goes_in_prose_in_json_and_cut_short(shape):
    assert redact(f"my key is {shape}, thanks") == "my key is [redacted], thanks"
    assert json.loads(redact(json.dumps({"content": f"key:\n{shape}\nbye"}))) == {"content": "key:\n[redacted]\nbye"}
    if shape.startswith("-----BEGIN"):  # a key block cut before its END line still goes
        cut = shape.split("-----END")[0]
        assert redact(cut) == "[redacted]"
        assert json.loads(redact(json.dumps({"content": cut}))) == {"content": "[redacted]"}


@pytest.mark.parametrize("line", DOTENV)
def test_a_pasted_env_keeps_its_names_and_loses_its_values(line):
    assert redact(line) == DOTENV[line]
    assert redact(f"here is my .env:\n{line}\nDEBUG=1\n") == f"here is my .env:\n{DOTENV[line]}\nDEBUG=1\n"
    inside_json = json.dumps({"content": f"DEBUG=1\n{line}"})
    assert json.loads(redact(inside_json)) == {"content": f"DEBUG=1\n{DOTENV[line]}"}


@pytest.mark.parametrize("text", NOT_SECRETS)
def test_what_only_looks_like_a_secret_stays(text):
    assert redact(text) == text
    assert redact(json.dumps({"content": text})) == json.dumps({"content": text})


def test_query_names_are_secret_in_urls_but_not_as_json_fields():
    url = "https://acct.blob.core.windows.net/c/f?sv=2024&" + "&".join(f"{k}={v}" for k, v in SECRET_QUERY.items())
    assert (
        redact(f"fetch {url} now")
        == "fetch https://acct.blob.core.windows.net/c/f?sv=2024&" + "&".join(f"{k}=[redacted]" for k in SECRET_QUERY) + " now"
    )
    assert all(is_secret_query_name(name) for name in ("sig", "Signature", "code", "X-Amz-Signature", "api_key"))
    assert not any(is_secret_name(name) for name in ("sig", "signature", "code"))


# JSON whose keys mix secret names and ordinary ones; texts that cannot form a key shape or NAME=value.
_PLAIN_TEXT = st.text(alphabet="abcdefghij ,.:;!?()[]{}0123456789\n\t", max_size=30)
_KEYS = st.sampled_from([*sorted(SECRET_NAMES), "api_key", "apiKey", "max_tokens", "prompt_tokens", "code", "model", "text"])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _PLAIN_TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children, max_size=4),
    max_leaves=20,
)


def _expected(value):
    if isinstance(value, dict):
        return {key: "[redacted]" if is_secret_name(key) else _expected(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_expected(item) for item in value]
    return value


@given(_JSON, st.sampled_from([None, 2]))
def test_any_json_stays_json_with_every_secret_fields_value_gone_and_nothing_else(document, indent):
    text = json.dumps(document, indent=indent)
    assert json.loads(redact(text)) == _expected(document)
    assert redact(redact(text)) == redact(text)


@given(st.sampled_from(KEY_SHAPES + list(DOTENV)), _PLAIN_TEXT, _PLAIN_TEXT)
def test_a_secret_anywhere_in_text_goes(secret, before, after):
    value = secret.split("=", 1)[1].strip(" '\"") if secret in DOTENV else secret
    text = f"{before}\n{secret}\n{after}"
    assert value not in redact(text)
    assert value not in redact(json.dumps({"messages": [{"content": text}]}))


@pytest.mark.e2e
def test_no_secret_of_any_shape_or_field_is_stored_and_the_files_are_private(tmp_path):
    echoed = {
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "usage": {"prompt_tokens": 3, "completion_tokens": 4},
        "choices": [{"message": {"role": "assistant", "content": "You said " + " and ".join(KEY_SHAPES)}}],
    }
    with FakeUpstream() as upstream:
        upstream.routes["/v1/chat/completions"] = Scenario(body=json.dumps(echoed).encode())
        upstream.routes["/v1/bad/chat/completions"] = Scenario(
            body=json.dumps({"error": {"message": f"Incorrect API key provided: {KEY_SHAPES[0]}"}}).encode(), status=401
        )
        config = write_config(
            tmp_path / "config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"}, store_bodies=True
        )
        proxy = RunningProxy(config, tmp_path / "meter.db")
        try:
            request = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "keys: " + " ".join(KEY_SHAPES) + "\nmy .env:\n" + "\n".join(DOTENV)}],
                **SECRET_FIELDS,
                **SECRET_NON_STRINGS,
            }
            ok = httpx.post(
                f"{proxy.origin}/openai/v1/chat/completions",
                params=SECRET_QUERY,
                json=request,
                headers={"authorization": f"Bearer {KEY_SHAPES[0]}"},
            )
            bad = httpx.post(f"{proxy.origin}/openai/v1/bad/chat/completions", json=request)
            rows = proxy.rows(wait_for=2)
        finally:
            proxy.stop()
    assert ok.status_code == 200 and bad.status_code == 401 and len(rows) == 2
    assert any("Incorrect API key provided: [redacted]" == row["error"] for row in rows)
    files = [tmp_path / name for name in ("meter.db", "meter.db-wal", "meter.db-shm") if (tmp_path / name).exists()]
    stored = b"".join(path.read_bytes() for path in files)
    assert b"You said" in stored  # the bodies are there, without their secrets
    secrets = [*KEY_SHAPES, *SECRET_FIELDS.values(), *SECRET_QUERY.values(), "918273645", "field-value-10", "field-value-11"]
    secrets += [line.split("=", 1)[1].strip(" '\"") for line in DOTENV]
    for secret in secrets:
        assert secret.encode() not in stored, secret
    assert b"DATABASE_PASSWORD=[redacted]" in stored and b"sig=redacted" in stored
    for path in files:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


def test_spool_and_quarantine_are_private(tmp_path):
    from tests.test_writer import _call

    for path in (callfile.spool_path(tmp_path / "meter.db"), callfile.quarantine_path(tmp_path / "meter.db")):
        callfile.append(path, [_call(1)])
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
_QUOTED_TEXT = st.text(alphabet='ab "\\/{}:,\n', max_size=20)  # quotes and backslashes, escaped twice when nested


@given(st.dictionaries(_KEYS, _SCALARS | _QUOTED_TEXT, max_size=6), st.sampled_from([None, 2]))
def test_secret_fields_of_json_inside_a_json_string_go_too(arguments, indent):
    """A tool call's `arguments` is JSON inside a JSON string, as the request body holds it."""
    body = json.dumps({"tool_calls": [{"function": {"name": "login", "arguments": json.dumps(arguments, indent=indent)}}]})
    redacted = json.loads(redact(body))
    assert json.loads(redacted["tool_calls"][0]["function"]["arguments"]) == _expected(arguments)


def test_a_secret_object_inside_a_json_string_goes_with_the_rest_of_that_string():
    arguments = json.dumps({"user": "ann", "password": {"old": "field-value-12", "new": "field-value-13"}, "after": 1})
    redacted = json.loads(redact(json.dumps({"arguments": arguments, "model": "m"})))
    assert redacted == {"arguments": '{"user": "ann", "password": "[redacted]"', "model": "m"}
