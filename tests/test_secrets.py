"""No credential reaches the database, whatever field or text it hides in, and
the files that may hold prompts are the user's alone."""

import json
import os
import stat

import httpx

from taskmeter.handover import callfile
from taskmeter.secrets import redact
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
]
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


def test_redaction_takes_exact_names_and_key_shapes_but_not_token_counts():
    body = json.dumps({**SECRET_FIELDS, "max_tokens": 100, "usage": {"prompt_tokens": 5}, "text": " ".join(KEY_SHAPES)})
    redacted = json.loads(redact(body))
    assert all(redacted[name] == "[redacted]" for name in SECRET_FIELDS)
    assert redacted["max_tokens"] == 100 and redacted["usage"] == {"prompt_tokens": 5}
    assert redacted["text"] == " ".join(["[redacted]"] * len(KEY_SHAPES))


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
                "messages": [{"role": "user", "content": "keys: " + " ".join(KEY_SHAPES)}],
                **SECRET_FIELDS,
            }
            ok = httpx.post(
                f"{proxy.origin}/openai/v1/chat/completions", json=request, headers={"authorization": f"Bearer {KEY_SHAPES[0]}"}
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
    for secret in [*KEY_SHAPES, *SECRET_FIELDS.values()]:
        assert secret.encode() not in stored, secret
    for path in files:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


def test_spool_and_quarantine_are_private(tmp_path):
    from tests.test_writer import _call

    for path in (callfile.spool_path(tmp_path / "meter.db"), callfile.quarantine_path(tmp_path / "meter.db")):
        callfile.append(path, [_call(1)])
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
