"""The AI agents `meter run` knows: how each is recognised on a command line, how it
is pointed at the meter in the way it honours, and what `meter doctor --agent`
checks of its login and configuration on this machine (docs/agents.md)."""

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Launch:
    """One agent's command line and environment, as `meter run` will start it."""

    argv: list[str]
    env: dict[str, str]
    program_index: int = 0  # where the agent's own arguments start, after `npx PACKAGE` and the like

    def insert_options(self, options: list[str]) -> None:
        """Options placed right after the agent's name, before its subcommand."""
        at = self.program_index + 1
        self.argv[at:at] = options


@dataclass
class Machine:
    """What an agent reads on this machine: the user's environment, home and working folder."""

    env: dict[str, str]
    home: Path
    cwd: Path
    intercepted: Callable[[str], bool] = field(default=lambda host: False)  # does HTTPS-proxy mode meter this host?


@dataclass(frozen=True)
class Finding:
    ok: bool
    detail: str


@dataclass(frozen=True)
class Agent:
    name: str
    commands: tuple[str, ...]  # executable names
    packages: tuple[str, ...]  # package names, for `npx PACKAGE`, `uvx PACKAGE`, ...
    point: Callable[[Launch, Machine], None]  # adjusts what `meter run` starts
    diagnose: Callable[[Machine, str], list[Finding]]  # what the meter will and will not see; the gateway origin


# ---------------------------------------------------------------- Codex CLI

# Codex ignores OPENAI_BASE_URL: a provider table of the meter's own, with the
# user's OpenAI login, points it at the gateway. WebSockets are off in it: HTTP+SSE
# is the transport meter run is tested with (the meter meters either; docs/agents.md).
CODEX_PROVIDER = "taskmeter"


def _codex_home(machine: Machine) -> Path:
    return Path(machine.env.get("CODEX_HOME") or machine.home / ".codex")


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _codex_login(machine: Machine) -> str:
    """Where Codex's credentials come from: "chatgpt" (subscription tokens, sent to
    chatgpt.com), "auth.json" (`codex login --with-api-key`), the environment
    variable holding a key, or "none"."""
    auth = _read_json(_codex_home(machine) / "auth.json") or {}
    mode = str(auth.get("auth_mode") or "").lower()
    if machine.env.get("CODEX_API_KEY"):
        return "CODEX_API_KEY"
    if mode == "chatgpt" or (auth.get("tokens") and mode != "apikey" and not auth.get("OPENAI_API_KEY")):
        return "chatgpt"
    if auth.get("OPENAI_API_KEY"):
        return "auth.json"
    return "OPENAI_API_KEY" if machine.env.get("OPENAI_API_KEY") else "none"


def _codex_config(machine: Machine) -> dict:
    import tomllib  # only when an agent is run or checked, not for every `meter` command

    try:
        return tomllib.loads((_codex_home(machine) / "config.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def _codex_chosen_provider(options: list[str], config: dict) -> str:
    """The model provider the command line's `-c` options or config.toml pick (Codex's default is "openai")."""
    for index, arg in enumerate(options):
        value = options[index + 1] if arg in ("-c", "--config") and index + 1 < len(options) else arg.removeprefix("--config=")
        match = re.fullmatch(r"\s*model_provider\s*=\s*[\"']?([^\"']*)[\"']?\s*", value)
        if match:
            return match.group(1)
        if arg == "--oss":
            return "oss"
    return str(config.get("model_provider") or "openai")


def _point_codex(launch: Launch, machine: Machine) -> None:
    login = _codex_login(machine)
    if login == "chatgpt":
        return  # its calls go to chatgpt.com, not to a base URL: only HTTPS-proxy mode reaches them
    if _codex_chosen_provider(launch.argv[launch.program_index + 1 :], _codex_config(machine)) != "openai":
        return  # the user's own provider (Azure, Ollama, ...) goes where its table says
    table = {
        "name": CODEX_PROVIDER,
        "base_url": launch.env["OPENAI_BASE_URL"],
        "wire_api": "responses",
        # The key from `codex login --with-api-key`, else the variable that holds one.
        **({"requires_openai_auth": True} if login in ("auth.json", "none") else {"env_key": login}),
        "supports_websockets": False,  # HTTP+SSE, which the meter meters
    }
    inline = ", ".join(f"{key}={json.dumps(value)}" for key, value in table.items())
    launch.insert_options(["-c", f'model_provider="{CODEX_PROVIDER}"', "-c", f"model_providers.{CODEX_PROVIDER}={{{inline}}}"])


def _diagnose_codex(machine: Machine, origin: str) -> list[Finding]:
    findings = []
    login = _codex_login(machine)
    auth_file = _codex_home(machine) / "auth.json"
    if login == "chatgpt":
        if machine.intercepted("chatgpt.com"):
            findings.append(
                Finding(
                    True,
                    f"ChatGPT login ({auth_file}): subscription calls to chatgpt.com are metered in HTTPS-proxy mode, which `meter run -- codex` sets",
                )
            )
        else:
            findings.append(
                Finding(
                    False,
                    f"ChatGPT login ({auth_file}): its calls go to chatgpt.com, which this meter does not intercept; "
                    "to meter them, log in with an API key (`codex login --with-api-key`)",
                )
            )
    elif login != "none":
        findings.append(
            Finding(
                True,
                f"API key ({login}): `meter run -- codex` points it at the gateway with -c model_provider=taskmeter (HTTP+SSE, no WebSocket)",
            )
        )
    else:
        findings.append(Finding(False, f"no login found ({auth_file}, OPENAI_API_KEY): log in with `codex login --with-api-key`"))
    config = _codex_config(machine)
    provider = _codex_chosen_provider([], config)
    if provider != "openai":
        table = (config.get("model_providers") or {}).get(provider) or {}
        url = str(table.get("base_url") or "")
        metered = url.startswith(origin)
        findings.append(
            Finding(
                metered,
                f"config.toml picks model_provider {provider!r} at {url or 'its default URL'}"
                + ("" if metered else ": `meter run` leaves it alone; set its base_url to the meter's gateway (see `meter env`)"),
            )
        )
    if machine.env.get("OPENAI_BASE_URL") and login != "chatgpt":
        findings.append(
            Finding(
                True,
                "OPENAI_BASE_URL is ignored by Codex: start it with `meter run -- codex`, which passes the gateway as -c options",
            )
        )
    return findings


# ---------------------------------------------------------------- Gemini CLI


def _gemini_auth_type(machine: Machine) -> str | None:
    """`security.auth.selectedType` as Gemini CLI merges it: the workspace's settings over the user's."""
    home = Path(machine.env.get("GEMINI_CLI_HOME") or machine.home)
    for path in (machine.cwd / ".gemini" / "settings.json", home / ".gemini" / "settings.json"):
        settings = _read_settings(path)
        chosen = ((settings.get("security") or {}).get("auth") or {}).get("selectedType") or settings.get("selectedAuthType")
        if chosen:
            return str(chosen)
    return None


def _read_settings(path: Path) -> dict:
    """A Gemini settings file, which may hold whole-line // comments."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        try:
            data = json.loads("\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//")))
        except ValueError:
            return {}
    return data if isinstance(data, dict) else {}


def _point_gemini(launch: Launch, machine: Machine) -> None:
    # Gemini CLI 0.61 takes GOOGLE_GEMINI_BASE_URL for its "gateway" auth type, which
    # it then refuses (exit 41) unless the settings name "gemini-api-key". Without
    # that setting its API-key calls still reach the meter in HTTPS-proxy mode.
    if _gemini_auth_type(machine) != "gemini-api-key":
        launch.env.pop("GOOGLE_GEMINI_BASE_URL", None)


def _diagnose_gemini(machine: Machine, origin: str) -> list[Finding]:
    chosen = _gemini_auth_type(machine)
    if chosen == "gemini-api-key":
        return [Finding(True, "auth type gemini-api-key: metered through the gateway (GOOGLE_GEMINI_BASE_URL)")]
    if chosen == "oauth-personal":
        host = "cloudcode-pa.googleapis.com"
        if machine.intercepted(host):
            return [
                Finding(
                    True,
                    f"Login with Google: its Code Assist calls to {host} are metered in HTTPS-proxy mode, which `meter run -- gemini` sets",
                )
            ]
        return [
            Finding(
                False,
                f"Login with Google: its calls go to the Code Assist API ({host}), which this meter does not intercept; "
                'use an API key (settings "security.auth.selectedType": "gemini-api-key" and GEMINI_API_KEY) to be metered',
            )
        ]
    if chosen == "vertex-ai":
        host = "aiplatform.googleapis.com"
        if machine.intercepted(host):
            return [Finding(True, f"auth type vertex-ai: metered in HTTPS-proxy mode ({host}), which `meter run -- gemini` sets")]
        return [Finding(False, f"auth type vertex-ai: its calls go to {host}, which this meter does not intercept")]
    if chosen:
        return [Finding(False, f"auth type {chosen!r}: the meter does not know where it sends calls")]
    if not machine.env.get("GEMINI_API_KEY"):
        return [Finding(False, "no auth type in ~/.gemini/settings.json and no GEMINI_API_KEY: run `gemini` once to log in")]
    findings = [
        Finding(
            True,
            "no auth type in the settings: `meter run -- gemini` meters its GEMINI_API_KEY calls in HTTPS-proxy mode; "
            'add "security": {"auth": {"selectedType": "gemini-api-key"}} to ~/.gemini/settings.json to use the gateway instead',
        )
    ]
    if machine.env.get("GOOGLE_GEMINI_BASE_URL"):
        findings.append(
            Finding(
                False,
                'GOOGLE_GEMINI_BASE_URL is set but the settings name no auth type: Gemini CLI exits 41 ("Invalid auth method selected"); '
                'add "security": {"auth": {"selectedType": "gemini-api-key"}} to ~/.gemini/settings.json',
            )
        )
    return findings


# ---------------------------------------------------------------- Claude Code


def _point_nothing(launch: Launch, machine: Machine) -> None:
    """The common variables are all this agent needs."""


# Claude Code on a cloud: its switch, and a host and path its calls take there.
_CLAUDE_CLOUDS = (
    (
        "CLAUDE_CODE_USE_BEDROCK",
        "Bedrock",
        "bedrock-runtime.us-east-1.amazonaws.com",
        "/model/anthropic.claude/invoke-with-response-stream",
    ),
    (
        "CLAUDE_CODE_USE_VERTEX",
        "Vertex AI",
        "us-east5-aiplatform.googleapis.com",
        "/v1/projects/p/locations/l/publishers/anthropic/models/claude:streamRawPredict",
    ),
)


def _diagnose_claude(machine: Machine, origin: str) -> list[Finding]:
    from taskmeter.proxy.routing import classify

    env = machine.env
    for switch, cloud, host, path in _CLAUDE_CLOUDS:
        if env.get(switch):
            if machine.intercepted(host) and classify("POST", path) is not None:
                detail = (
                    f"{cloud}: metered in HTTPS-proxy mode, which `meter run -- claude` sets (ANTHROPIC_BASE_URL does not apply)"
                )
                return [Finding(True, detail)]
            return [
                Finding(False, f"{cloud}: the meter cannot yet read Claude Code's calls to {host} ({path.rsplit('/', 1)[-1]})")
            ]
    config_dir = Path(env.get("CLAUDE_CONFIG_DIR") or machine.home / ".claude")
    credentials = _read_json(config_dir / ".credentials.json") or {}
    if env.get("ANTHROPIC_API_KEY") or env.get("ANTHROPIC_AUTH_TOKEN"):
        login = "API key"
    elif credentials.get("claudeAiOauth"):
        login = "claude.ai login (subscription)"
    else:
        login = "login kept outside the config folder (e.g. the macOS keychain) or none yet"
    return [
        Finding(
            True, f"{login}: metered through the gateway (ANTHROPIC_BASE_URL, without /v1), which `meter env` and `meter run` set"
        )
    ]


# ---------------------------------------------------------------- opencode, aider, llm


def _diagnose_opencode(machine: Machine, origin: str) -> list[Finding]:
    config_home = Path(machine.env.get("XDG_CONFIG_HOME") or machine.home / ".config")
    findings = []
    for path in (config_home / "opencode" / "opencode.json", machine.cwd / "opencode.json"):
        providers = (_read_settings(path).get("provider") or {}) if path.exists() else {}
        for name, provider in providers.items():
            url = str(((provider or {}).get("options") or {}).get("baseURL") or "")
            if url and not url.startswith(origin):
                findings.append(
                    Finding(
                        False,
                        f"{path} sends provider {name!r} to {url}: the meter does not see it; remove baseURL there or point it at the gateway",
                    )
                )
    findings.append(
        Finding(
            True,
            "OpenAI and Anthropic providers are metered through the gateway (OPENAI_BASE_URL, ANTHROPIC_BASE_URL with or without /v1)",
        )
    )
    return findings


def _point_aider(launch: Launch, machine: Machine) -> None:
    launch.env["OPENAI_API_BASE"] = launch.env["OPENAI_BASE_URL"]  # LiteLLM's name for it


def _diagnose_aider(machine: Machine, origin: str) -> list[Finding]:
    return [
        Finding(
            True,
            "OpenAI models through OPENAI_API_BASE, Anthropic through ANTHROPIC_BASE_URL, others in HTTPS-proxy mode: `meter run -- aider` sets them",
        )
    ]


def _diagnose_llm(machine: Machine, origin: str) -> list[Finding]:
    return [Finding(True, "OpenAI models through OPENAI_BASE_URL (models in extra-openai-models.yaml go to their own api_base)")]


AGENTS = {
    agent.name: agent
    for agent in (
        Agent("codex", ("codex",), ("@openai/codex",), _point_codex, _diagnose_codex),
        Agent("claude", ("claude",), ("@anthropic-ai/claude-code",), _point_nothing, _diagnose_claude),
        Agent("gemini", ("gemini",), ("@google/gemini-cli",), _point_gemini, _diagnose_gemini),
        Agent("aider", ("aider",), ("aider-chat", "aider-install"), _point_aider, _diagnose_aider),
        Agent("opencode", ("opencode",), ("opencode-ai",), _point_nothing, _diagnose_opencode),
        Agent("llm", ("llm",), ("llm",), _point_nothing, _diagnose_llm),
    )
}

# Agents that are not pointed: their calls leave through their makers' own servers.
UNREACHABLE = {
    "cursor": "Cursor sends every request, even with your own key, through Cursor's servers (api2.cursor.sh), which cannot reach this meter",
    "copilot": "GitHub Copilot CLI has no base-URL setting and does not reliably honour HTTPS_PROXY; use its own OpenTelemetry export",
}

# Runners that start a package by name: the agent is the package after them.
_LAUNCHERS = {("npx",), ("bunx",), ("pnpx",), ("uvx",), ("pnpm", "dlx"), ("npm", "exec"), ("pipx", "run"), ("bun", "x")}
# Their options that take the next word as a value, and those that run a shell string.
_VALUE_OPTIONS = {"-p", "--package", "--from", "--with", "--python", "--spec", "--index-url"}
_CALL_OPTIONS = {"-c", "--call"}


def _package_name(spec: str) -> str:
    """`@openai/codex@0.171.0` -> `@openai/codex`; `aider-chat==0.86` -> `aider-chat`."""
    name = re.split(r"[=<>~!]", spec, maxsplit=1)[0]
    at = name.find("@", 1)
    return name[:at] if at > 0 else name


def recognise(argv: list[str]) -> tuple[Agent, int] | None:
    """The agent a command line starts, by the name of its program (a path or not),
    also through a package runner such as `npx @openai/codex`; with the index of
    the agent's name in `argv`."""
    by_command = {command: agent for agent in AGENTS.values() for command in agent.commands}
    by_package = {package: agent for agent in AGENTS.values() for package in agent.packages}
    name = Path(argv[0]).name
    if name in by_command:
        return by_command[name], 0
    for launcher in _LAUNCHERS:
        if tuple([name, *argv[1 : len(launcher)]]) != launcher:
            continue
        index = len(launcher)
        while index < len(argv):
            arg = argv[index]
            if arg in _CALL_OPTIONS:
                return None  # a shell string: no agent name to put options after
            if arg.startswith("-"):
                index += 2 if arg in _VALUE_OPTIONS else 1
                continue
            # The package itself, or (after `-p PACKAGE`, `--from PACKAGE`) the command it provides.
            agent = by_package.get(_package_name(arg)) or by_command.get(arg)
            return (agent, index) if agent else None
    return None


def prepare(argv: list[str], env: dict[str, str], machine: Machine) -> tuple[list[str], dict[str, str], Agent | None]:
    """The command line and environment `meter run` starts: `env` (the user's plus
    the meter's variables) adjusted the way the recognised agent honours."""
    found = recognise(argv)
    if found is None:
        return argv, env, None
    agent, index = found
    launch = Launch(list(argv), dict(env), index)
    agent.point(launch, machine)
    return launch.argv, launch.env, agent


def default_machine(env: dict[str, str], intercepted: Callable[[str], bool]) -> Machine:
    home = Path(env.get("HOME") or Path.home())
    return Machine(env, home, Path.cwd(), intercepted)
