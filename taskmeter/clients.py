"""Which program made a call, read from its User-Agent (interactions.client): one
table, first match wins, so the agents come before the SDKs they are built on.
Standard library only: `meter show`, `log` and the session report use it."""

import re

# (what the User-Agent holds, with the version as its group; the name a person knows).
_CLIENTS = [
    (r"claude-cli/(\S+)", "Claude Code"),  # claude-cli/2.1.197 (external, sdk-cli)
    (r"codex_(?:cli_rs|exec|vscode)/(\S+)", "Codex"),  # codex_exec/0.171.0 (Debian 12.0.0; x86_64) xterm (codex_exec; 0.171.0)
    (r"GeminiCLI(?:-[\w-]+)?/([^/\s]+)", "Gemini CLI"),  # GeminiCLI-tui/0.61.0/gemini-2.5-flash (linux; x64; terminal)
    (r"OpenAI/Python (\S+)", "openai-python"),
    (r"OpenAI/JS (\S+)", "openai-node"),
    (r"Anthropic/Python (\S+)", "anthropic-python"),
    (r"Anthropic/JS (\S+)", "anthropic-typescript"),
    (r"google-genai-sdk/(\S+)", "google-genai"),
    (r"python-httpx/(\S+)", "httpx"),
    (r"python-requests/(\S+)", "requests"),
    (r"curl/(\S+)", "curl"),
]
_PATTERNS = [(re.compile(pattern), name) for pattern, name in _CLIENTS]
# The agents that name their own sessions (store/sessions.py), as this table names them.
AGENTS = ("Claude Code", "Codex", "Gemini CLI")


def client_name(user_agent: str | None) -> str | None:
    """`Claude Code 2.1.197` from `claude-cli/2.1.197 (external, cli)`; None when unknown."""
    for pattern, name in _PATTERNS:
        found = pattern.search(user_agent or "")
        if found:
            return f"{name} {found[1]}"
    return None
