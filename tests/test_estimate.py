"""Token estimates work offline from the rank files shipped in the package."""

import hashlib
import tomllib
from pathlib import Path

import pytest

from taskmeter.recorder import estimate

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_rank_files_match_tiktokens_published_hashes():
    for name, (_, expected) in estimate.BPE_FILES.items():
        assert hashlib.sha256(estimate.shipped_bpe(name)).hexdigest() == expected


def test_the_package_build_ships_the_rank_files():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["taskmeter.recorder"]
    shipped = {p.name for pattern in patterns for p in (ROOT / "taskmeter" / "recorder").glob(pattern)}
    assert shipped == {f"{name}.tiktoken.gz" for name in estimate.BPE_FILES}


def test_a_corrupt_cached_file_is_replaced_from_the_package(tmp_path, monkeypatch):
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)  # restored after the test
    monkeypatch.setattr(estimate, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(estimate, "_prepared", False)
    url, _ = estimate.BPE_FILES["o200k_base"]
    corrupt = tmp_path / hashlib.sha1(url.encode()).hexdigest()
    corrupt.write_bytes(b"not a rank file")
    assert estimate.count_tokens("hello world", "gpt-4o") == 2
    assert hashlib.sha256(corrupt.read_bytes()).hexdigest() == estimate.BPE_FILES["o200k_base"][1]


@pytest.mark.parametrize(
    "model, encoding",
    [
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("claude-sonnet-4-5", "o200k_base"),
        (None, "o200k_base"),
    ],
)
def test_encoding_by_model(model, encoding):
    assert estimate.encoding_name(model) == encoding


def test_request_tokens_count_prompt_text_and_tools_but_not_ids():
    request = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hello world"}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
    }
    with_tools = estimate.request_tokens(request, "gpt-4o")
    without = estimate.request_tokens({**request, "tools": []}, "gpt-4o")
    assert without == estimate.count_tokens("hello world", "gpt-4o")
    assert with_tools > without
