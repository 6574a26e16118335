"""Cost per call from genai-prices' bundled data; the source of each price is kept."""

from importlib.metadata import version

from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

from taskmeter.recorder.usage import Usage

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
}
_VERSION = version("genai-prices")


def price(provider: str | None, model: str | None, usage: Usage) -> tuple[float | None, str | None]:
    """(cost in USD, where the price came from); (None, reason) when unknown, never 0."""
    reported = (usage.raw or {}).get("cost") if isinstance(usage.raw, dict) else None
    if isinstance(reported, (int, float)) and not isinstance(reported, bool):
        return float(reported), f"reported by {provider}"
    if not model or usage.input_total is None or usage.output_total is None:
        return None, None
    try:
        calculation = calc_price(
            PriceUsage(
                input_tokens=usage.input_total,
                cache_read_tokens=usage.cache_read or 0,
                cache_write_tokens=usage.cache_write or 0,
                output_tokens=usage.output_total,
            ),
            model_ref=model,
            provider_id=_PROVIDER_IDS.get(provider or ""),
        )
    except LookupError:
        return None, f"no price for {model} in genai-prices {_VERSION}"
    except Exception as exc:  # a price-data problem must not lose the call
        return None, f"genai-prices {_VERSION} failed: {exc}"[:200]
    return float(calculation.total_price), f"genai-prices {_VERSION}: {calculation.provider.id}/{calculation.model.id}"
