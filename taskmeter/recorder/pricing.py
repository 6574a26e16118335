"""Cost per call from genai-prices' bundled data; the source of each price is kept.

genai-prices is imported when the first call is priced, not when the recorder starts:
with pydantic, httpx and importlib.metadata under it, its import was two thirds of the
CPU of a recorder's start (0.2 s), which a proxy that prices no call never needs."""

from taskmeter.protocols.usage import Usage
from taskmeter.store.interactions import call_cost

# Our provider names -> genai-prices provider ids (None: let it guess from the model).
_PROVIDER_IDS = {
    "openai": "openai",
    "azure": "azure",
    "anthropic": "anthropic",
    "gemini": "google",
    "vertex": "google",
    "openrouter": "openrouter",
    "groq": "groq",
    "bedrock": "aws",
    "mistral": "mistral",
    "deepseek": "deepseek",
    "xai": "x-ai",
    "together": "together",
    "fireworks": "fireworks",
    "chatgpt": "openai",  # Codex on a ChatGPT login: priced as OpenAI's API would
    "code_assist": "google",  # Gemini CLI's Login with Google
}


def price(provider: str | None, model: str | None, usage: Usage) -> tuple[float | None, str | None]:
    """(cost in USD, where the price came from); (None, reason) when unknown, never 0.
    A usage with a count that cannot be real is not priced at all."""
    if usage.counts_nulled:
        return None, "not priced: a token count cannot be real (see notes)"
    if usage.reported_cost is not None:
        return usage.reported_cost, f"reported by {provider}"
    if not model or usage.input_total is None or usage.output_total is None:
        return None, None
    import genai_prices  # here, not at the top: see the module's docstring

    try:
        calculation = genai_prices.calc_price(
            genai_prices.Usage(
                input_tokens=usage.input_total,
                cache_read_tokens=usage.cache_read or 0,
                cache_write_tokens=usage.cache_write or 0,
                output_tokens=usage.output_total,
            ),
            model_ref=model,
            provider_id=_PROVIDER_IDS.get(provider or ""),
        )
    except LookupError:
        return None, f"no price for {model} in genai-prices {genai_prices.__version__}"
    except Exception as exc:  # a price-data problem must not lose the call
        return None, f"genai-prices {genai_prices.__version__} failed: {exc}"[:200]
    source = f"genai-prices {genai_prices.__version__}: {calculation.provider.id}/{calculation.model.id}"
    cost = call_cost(float(calculation.total_price))
    if cost is None:
        return None, f"not priced: {source} gave {float(calculation.total_price)!r}, not a plausible cost of one call"
    return cost, source
