"""Make the browser-use chat model named by VNCSESS_LLM.

  demo                   the scripted in-process demo model (demo_model.py)
  openai:MODEL           OpenAI; with VNCSESS_LLM_BASE_URL, any OpenAI-compatible server
  anthropic:MODEL        Anthropic
  google:MODEL           Google Gemini
  ollama:MODEL           Ollama at VNCSESS_LLM_BASE_URL (or OLLAMA_HOST)

Keys come from the session's llm env file (/run/secrets/llm_env), which settings.py reads into
a dict: they are given to the chat model here and never put into the environment, which every
Chromium the runner starts inherits. Retries are kept low: a session should fail in seconds,
not minutes, when the model is down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

LOG = logging.getLogger("vncsess.llm")

PROVIDERS = ("openai", "anthropic", "google", "ollama")

# HTTP statuses after which retrying the same model cannot help: stop the run at once.
FATAL_STATUS = {
    401: "authentication failed",
    403: "permission denied",
    404: "model or endpoint not found",
}


class LLMConfigError(ValueError):
    pass


def _key(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def make_llm(
    spec: str, base_url: str | None, env: Mapping[str, str], demo_step_delay: float = 1.0
) -> Any:
    """The chat model for `spec`, with its key from `env` (the llm env file's entries)."""
    spec = spec.strip()
    if spec == "demo":
        from vncsess_agent.demo_model import DemoChatModel

        return DemoChatModel(step_delay=demo_step_delay)

    provider, sep, model = spec.partition(":")
    provider = provider.strip().lower()
    model = model.strip()
    if not sep or not model or provider not in PROVIDERS:
        raise LLMConfigError(
            f"VNCSESS_LLM={spec!r} is not 'demo' or PROVIDER:MODEL "
            f"with PROVIDER one of {', '.join(PROVIDERS)}"
        )

    if provider == "openai":
        api_key = _key(env, "OPENAI_API_KEY")
        # The SDK would read OPENAI_BASE_URL from the environment; the env file is not there.
        base_url = base_url or _key(env, "OPENAI_BASE_URL")
        if not api_key:
            if not base_url:
                raise LLMConfigError("openai needs OPENAI_API_KEY in the session's llm env file")
            api_key = "no-key"  # OpenAI-compatible servers often need none; the SDK insists on one
        from browser_use.llm.openai.chat import ChatOpenAI

        return ChatOpenAI(
            model=model, api_key=api_key, base_url=base_url, max_retries=2, timeout=120
        )

    if provider == "anthropic":
        api_key = _key(env, "ANTHROPIC_API_KEY")
        base_url = base_url or _key(env, "ANTHROPIC_BASE_URL")
        if not api_key:
            raise LLMConfigError("anthropic needs ANTHROPIC_API_KEY in the session's llm env file")
        from browser_use.llm.anthropic.chat import ChatAnthropic

        return ChatAnthropic(
            model=model, api_key=api_key, base_url=base_url, max_retries=2, timeout=120
        )

    if provider == "google":
        api_key = _key(env, "GOOGLE_API_KEY", "GEMINI_API_KEY")
        if not api_key:
            raise LLMConfigError(
                "google needs GOOGLE_API_KEY (or GEMINI_API_KEY) in the session's llm env file"
            )
        from browser_use.llm.google.chat import ChatGoogle

        kwargs: dict[str, Any] = {"http_options": {"base_url": base_url}} if base_url else {}
        return ChatGoogle(model=model, api_key=api_key, max_retries=2, **kwargs)

    host = base_url or _key(env, "OLLAMA_HOST")
    if not host:
        raise LLMConfigError(
            "ollama needs the server address: set the session's LLM base URL (the agent container "
            "cannot reach an Ollama on its own localhost)"
        )
    from browser_use.llm.ollama.chat import ChatOllama

    return ChatOllama(model=model, host=host, timeout=120)


def _http_status(error: BaseException) -> int | None:
    """The HTTP status of an SDK error, looking through the exception chain.

    browser-use wraps provider errors in ModelProviderError, but not always with the real
    status (google and ollama errors arrive as 502); the SDK's own exception has it as
    status_code (openai, anthropic, ollama) or code (google-genai).
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for attr in ("status_code", "code"):
            value = getattr(current, attr, None)
            if isinstance(value, int) and value in FATAL_STATUS:
                return value
        current = current.__cause__ or current.__context__
    return None


def fatal_error_message(error: BaseException) -> str | None:
    """A one-line message if `error` is an LLM error that retrying cannot fix, else None."""
    status = _http_status(error)
    if status is None:
        return None
    message = str(getattr(error, "message", "") or error).strip()
    return f"LLM {FATAL_STATUS[status]} (HTTP {status}): {message}"


def _root_cause(error: BaseException) -> BaseException:
    seen = set()
    while (cause := error.__cause__ or error.__context__) is not None and id(error) not in seen:
        seen.add(id(error))
        error = cause
    return error


def explain_connection_error(error: BaseException, where: str | None) -> str | None:
    """'Connection error.' from the SDKs says nothing; name the server and the cause."""
    if (
        "connection error" not in str(error).lower()
        and "connecterror" not in type(_root_cause(error)).__name__.lower()
    ):
        return None
    cause = _root_cause(error)
    detail = str(cause).strip() or type(cause).__name__
    return f"cannot reach the LLM server {where or '(provider default URL)'}: {detail}"


def watch_errors(llm: Any, base_url: str | None, on_fatal: Callable[[str], None]) -> None:
    """Wrap llm.ainvoke to make LLM errors readable and stop at once on unrecoverable ones.

    An unrecoverable error (bad key, unknown model) calls on_fatal(message): browser-use would
    otherwise retry the same failing call max_failures times. A connection error is re-raised
    with the server address and the underlying cause instead of the SDK's bare "Connection error.".
    """
    from browser_use.llm.exceptions import ModelProviderError

    original = llm.ainvoke

    async def ainvoke(messages: Any, output_format: Any = None, **kwargs: Any) -> Any:
        try:
            return await original(messages, output_format, **kwargs)
        except Exception as exc:
            message = fatal_error_message(exc)
            if message:
                on_fatal(message)
                raise
            explained = explain_connection_error(exc, base_url)
            if explained:
                status = getattr(exc, "status_code", 502)
                raise ModelProviderError(explained, status_code=status, model=llm.model) from exc
            raise

    try:
        object.__setattr__(llm, "ainvoke", ainvoke)
    except (AttributeError, TypeError):
        LOG.debug("cannot wrap %s.ainvoke; fatal LLM errors will be retried", type(llm).__name__)
