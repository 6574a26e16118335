"""Every recorded response: the parser states exactly the usage its meta.json gives,
however the body is cut into pieces, and with gzip on top."""

import gzip

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskmeter.recorder.parse import BodyParser
from tests.fixtures import ALL

USAGE_FIELDS = ("input_total", "cache_read", "cache_write", "output_total", "reasoning")

# These two responses state `output_tokens_details.thinking_tokens: 0`, which
# wire-formats.md names as Anthropic's reasoning count; the fixtures' normaliser
# ignored that field and left reasoning None. We record what the response states.
STATED_THINKING_TOKENS = {
    "anthropic/messages_nonstream_cache": 0,
    "anthropic/messages_stream_server_tools_cumulative": 0,
}


def expected_usage(fixture) -> dict | None:
    normalized = fixture.meta["normalized"]
    if normalized is None:
        return None
    expected = {f: normalized[f] for f in USAGE_FIELDS}
    if fixture.name in STATED_THINKING_TOKENS:
        assert b'"thinking_tokens":0' in fixture.body
        expected["reasoning"] = STATED_THINKING_TOKENS[fixture.name]
    return expected


def _parse(fixture, pieces, encoding=None):
    parser = BodyParser(fixture.protocol, fixture.content_type, encoding)
    for piece in pieces:
        parser.feed(piece)
    return parser.close()


def _check(fixture, result):
    assert result.parse_error is None
    expected = expected_usage(fixture)
    if expected is None:
        assert result.usage is None
    else:
        assert {f: getattr(result.usage, f) for f in USAGE_FIELDS} == expected
        assert result.usage.implausible == []  # every real provider's usage passes the plausibility rule
    stated = fixture.meta["expected_usage"]
    if "stream_errors" in stated:
        assert len(result.errors) == len(stated["stream_errors"])
    else:
        assert result.errors == []
    if fixture.meta["protocol"] in ("raw", "anthropic_count_tokens"):
        counted = stated.get("input_tokens", stated.get("totalTokens"))
        assert result.counted_tokens == counted


def test_all_47_fixtures_are_covered():
    assert len(ALL) == 47
    assert {f.meta["provider"] for f in ALL} == {
        "openai",
        "openai_responses",
        "anthropic",
        "gemini",
        "ollama",
        "azure",
        "openrouter",
        "groq",
        "bedrock",
        "code_assist",
    }


@pytest.mark.parametrize("fixture", ALL, ids=lambda f: f.name)
def test_fixture_whole(fixture):
    _check(fixture, _parse(fixture, [fixture.body]))


@pytest.mark.parametrize("fixture", ALL, ids=lambda f: f.name)
def test_fixture_byte_by_byte(fixture):
    body = fixture.body
    _check(fixture, _parse(fixture, [body[i : i + 1] for i in range(len(body))]))


@pytest.mark.parametrize("fixture", ALL, ids=lambda f: f.name)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fixture_random_chunkings(fixture, data):
    body = fixture.body
    cuts = sorted(data.draw(st.sets(st.integers(min_value=1, max_value=max(1, len(body) - 1)), max_size=40)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    _check(fixture, _parse(fixture, pieces))


@pytest.mark.parametrize("fixture", ALL, ids=lambda f: f.name)
def test_fixture_gzip_multi_member_in_small_pieces(fixture):
    half = len(fixture.body) // 2
    compressed = gzip.compress(fixture.body[:half]) + gzip.compress(fixture.body[half:])
    _check(fixture, _parse(fixture, [compressed[i : i + 7] for i in range(0, len(compressed), 7)], "gzip"))


def test_anthropic_stream_usage_is_overwritten_never_added():
    fixture = next(f for f in ALL if f.name == "anthropic/messages_stream_server_tools_cumulative")
    usage = _parse(fixture, [fixture.body]).usage
    # message_start said input 2 / write 3068 / out 69; the final delta says 6 / 3337 / 6289 read / 198.
    assert (usage.input_total, usage.cache_write, usage.cache_read, usage.output_total) == (6 + 3337 + 6289, 3337, 6289, 198)


def test_cut_stream_keeps_what_arrived():
    fixture = next(f for f in ALL if f.name == "anthropic/messages_stream_tool_use")
    cut = fixture.body[: fixture.body.index(b"message_delta")]
    result = _parse(fixture, [cut])
    assert result.usage.input_total == 633 and result.usage.output_total == 22  # message_start's partial count
    assert not result.finished


def test_cut_gemini_json_array_keeps_whole_elements():
    fixture = next(f for f in ALL if f.name == "gemini/stream_json_array_thoughts")
    cut = fixture.body[: len(fixture.body) - 5]
    result = _parse(fixture, [cut])
    assert result.parse_error is None
    assert result.model is not None


def test_malformed_body_is_reported_not_raised():
    parser = BodyParser("openai_chat", "application/json")
    parser.feed(b"<html>502 Bad Gateway</html>")
    result = parser.close()
    assert result.usage is None and result.parse_error
