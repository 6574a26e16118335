"""Token estimates with tiktoken when a provider states no usage.

The BPE rank files ship inside the package (gzipped) so estimates work offline.
They are verified against tiktoken's published SHA-256 and placed where tiktoken's
own offline cache (TIKTOKEN_CACHE_DIR) looks for them; nothing is ever fetched.

tiktoken and platformdirs are imported at the first estimate, not when the recorder
starts: most providers state their usage, and a start that never estimates saves them.
"""

import gzip
import hashlib
import json
import os
import tempfile
import threading
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from taskmeter.private import private_dir

if TYPE_CHECKING:
    import tiktoken

# name -> (the URL tiktoken keys its cache on, SHA-256 of the decompressed file)
BPE_FILES = {
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
}
DEFAULT_ENCODING = "o200k_base"

_lock = threading.Lock()
_prepared = False


class BpeFileCorrupt(RuntimeError):
    pass


def shipped_bpe(name: str) -> bytes:
    """The decompressed rank file shipped in the package, verified."""
    _, expected = BPE_FILES[name]
    data = gzip.decompress(resources.files("taskmeter.recorder").joinpath(f"bpe/{name}.tiktoken.gz").read_bytes())
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise BpeFileCorrupt(f"shipped {name} has SHA-256 {actual}, expected {expected}; reinstall taskmeter")
    return data


def cache_dir() -> Path:
    import platformdirs

    return platformdirs.user_cache_path("taskmeter") / "tiktoken"


def _prepare_cache() -> None:
    """Put verified rank files under tiktoken's cache names and point tiktoken there."""
    global _prepared
    with _lock:
        if _prepared:
            return
        directory = cache_dir()
        private_dir(directory)
        for name, (url, expected) in BPE_FILES.items():
            target = directory / hashlib.sha1(url.encode()).hexdigest()
            if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == expected:
                continue
            with tempfile.NamedTemporaryFile(dir=directory, delete=False) as handle:
                handle.write(shipped_bpe(name))
            os.replace(handle.name, target)
        os.environ["TIKTOKEN_CACHE_DIR"] = str(directory)
        _prepared = True


def encoding_name(model: str | None) -> str:
    """o200k_base for current OpenAI models and as the stand-in for other vendors'."""
    if model:
        from tiktoken.model import encoding_name_for_model

        try:
            name = encoding_name_for_model(model)
        except KeyError:
            return DEFAULT_ENCODING
        if name in BPE_FILES:
            return name
    return DEFAULT_ENCODING


def encoding(model: str | None) -> "tiktoken.Encoding":
    import tiktoken

    _prepare_cache()
    return tiktoken.get_encoding(encoding_name(model))


def count_tokens(text: str, model: str | None) -> int:
    if not text:
        return 0
    # A client that cut an emoji in half sends a lone surrogate: count it as one
    # replacement character rather than fail.
    text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return len(encoding(model).encode(text, disallowed_special=()))


# Keys whose strings are not prompt text the model reads as tokens.
_NOT_PROMPT_TEXT = {
    "model",
    "role",
    "type",
    "id",
    "tool_call_id",
    "call_id",
    "url",
    "image_url",
    "data",
    "mime_type",
    "media_type",
    "mimeType",
    "file_id",
    "previous_response_id",
    "service_tier",
    "user",
    "metadata",
    "stream",
    "stream_options",
    "cache_control",
    "signature",
}


def prompt_text(request: object) -> str:
    """Every string in a request body that the model reads (messages, system, tools)."""
    parts: list[str] = []

    def walk(value, key=None):
        if key in _NOT_PROMPT_TEXT:
            return
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, dict):
            for child_key, child in value.items():
                walk(child, child_key)
        elif isinstance(value, list):
            for child in value:
                walk(child, key)

    walk(request)
    return "\n".join(parts)


def request_tokens(request: object, model: str | None) -> int:
    if isinstance(request, dict):
        tools = request.get("tools")
        text = prompt_text({k: v for k, v in request.items() if k != "tools"})
        if tools:
            text += "\n" + json.dumps(tools, separators=(",", ":"))
        return count_tokens(text, model)
    return 0
