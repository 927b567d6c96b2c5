"""Logging to stdout (what `vncsess logs` shows), with secrets redacted.

Every line written through `logging` passes a filter that replaces the values loaded from
llm_env, so a provider error that echoes a key cannot leak it. browser-use's own logging setup
is switched off (BROWSER_USE_SETUP_LOGGING=false) so that this is the only handler.
"""

from __future__ import annotations

import logging
import re
import sys

LOG = logging.getLogger("vncsess")

_QUIET = (
    "httpx",
    "httpcore",
    "httpx2",
    "httpcore2",
    "openai",
    "anthropic",
    "google",
    "google_genai",
    "ollama",
    "urllib3",
    "asyncio",
    "cdp_use",
    "bubus",
    "websockets",
    "aiohttp",
    "PIL",
    "charset_normalizer",
)


# browser-use's closing advertisement after a failed run.
_NOISE = ("Did the Agent not work as expected?", "Open a short issue on GitHub")


class Redactor:
    def __init__(self, secrets: list[str] | None = None) -> None:
        self.secrets: list[str] = []
        self.add(secrets or [])

    def add(self, secrets: list[str]) -> None:
        """More values to hide (a pool session's claim brings the claimer's keys)."""
        # Longest first, so a value that contains another is replaced whole.
        found = {s for s in (*self.secrets, *secrets) if len(s) >= 4}
        self.secrets = sorted(found, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text


class _RedactingFilter(logging.Filter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        # browser-use logs the whole task at the start of a run; the runner already logged its
        # digest, and a 10 kB task does not belong in the logs.
        if (
            not message.strip()
            or "🎯 Task:" in message
            or any(noise in message for noise in _NOISE)
        ):
            return False
        redacted = self.redactor(message)
        if record.exc_info:
            # Format the traceback now, redacted, and drop exc_info so it is not re-added raw.
            formatter = logging.Formatter()
            redacted += "\n" + self.redactor(formatter.formatException(record.exc_info))
            record.exc_info = None
            record.exc_text = None
        record.msg, record.args = redacted, None
        return True


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _Formatter(logging.Formatter):
    default_msec_format = "%s.%03d"

    def format(self, record: logging.LogRecord) -> str:
        name = record.name
        if name.startswith("browser_use."):
            # 'browser_use.Agent🅰 1a2b ⇢ 🅑 ...' -> 'agent'
            # 'browser_use.browser.session' -> 'session'
            name = name.split(".")[-1].split(" ")[0].split("🅰")[0].lower() or "browser_use"
        record.shortname = name
        return _ANSI.sub("", super().format(record))


def setup(redactor: Redactor, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_Formatter("%(asctime)s %(levelname)-7s %(shortname)s: %(message)s"))
    handler.addFilter(_RedactingFilter(redactor))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    # "Unknown child process pid": Chromium's launcher forks; asyncio's child watcher complains.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    # browser-use marks its final answer with a custom RESULT level (35); keep it readable.
    logging.addLevelName(35, "RESULT")
