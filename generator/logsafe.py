"""One logging filter that masks secrets (bot token, API keys, URL passwords) in every record.

Libraries log secrets we cannot stop them from logging: python-telegram-bot puts the token in
``The token `...` was rejected`` and, at DEBUG, in the Bot API URL (``.../bot<token>``); a
``base_url`` may carry ``user:password@``. The filter sits on the root logger's handlers, so
whoever logs, the message, its arguments, the exception text and the stack are masked before
any handler formats them. It lives in ``generator`` so the CLI can use it too.

Example::

    >>> install(["123456:secret-token"])
    >>> logging.getLogger("x").warning("GET https://api.telegram.org/bot123456:secret-token/getMe")
    ... GET https://api.telegram.org/bot***/getMe
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping

MASK = "***"
# Environment variables whose values are secrets wherever they show up.
SECRET_VARIABLES = (
    "TELEGRAM_BOT_TOKEN",
    "TELEGRAM_WEBHOOK_SECRET",
    "ANIMATE_DATABASE_URL",  # may hold the database password
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
)
# Shorter values are not masked: "123" would mask every number in the log.
MIN_SECRET_LENGTH = 8
# Secrets recognised by their shape, known to us or not.
_SHAPES = (
    re.compile(r"\b\d{5,}:[A-Za-z0-9_-]{30,}"),  # Telegram bot token
    re.compile(r"\bAIza[0-9A-Za-z_-]{35}"),  # Google API key
    re.compile(r"\bhf_[A-Za-z0-9]{30,}"),  # Hugging Face token
)
_USERINFO = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)[^/\s@?#'\"`]+@", re.IGNORECASE)
_QUERY_SECRET = re.compile(
    r"(?P<name>[?&](?:key|api_key|token|access_token|secret)=)[^&\s#'\"`]+", re.IGNORECASE
)


class Redactor:
    """Masks known secret values, token-shaped strings, URL userinfo and key=... parameters."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        """Mask ``secret`` from now on (values shorter than 8 characters are ignored)."""
        if secret and len(secret.strip()) >= MIN_SECRET_LENGTH:
            self._secrets.add(secret.strip())

    def __call__(self, text: str) -> str:
        # Longest first, so a secret that contains another is masked whole.
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, MASK)
        for shape in _SHAPES:
            text = shape.sub(MASK, text)
        text = _USERINFO.sub(rf"\g<scheme>{MASK}@", text)
        return _QUERY_SECRET.sub(rf"\g<name>{MASK}", text)


class RedactingFilter(logging.Filter):
    """A handler filter that rewrites each record with its secrets masked; never drops one."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # bad %-args: let the handler report it, masked all the same
            message = f"{record.msg} {record.args!r}"
        record.msg, record.args = self.redactor(message), None
        if record.exc_info and not record.exc_text:
            # Formatted here (as the handler would), so the traceback text is masked too.
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor(record.stack_info)
        return True


def secrets_from(env: Mapping[str, str]) -> list[str]:
    """The secret values among ``env``'s variables (``SECRET_VARIABLES``)."""
    return [env[name] for name in SECRET_VARIABLES if env.get(name)]


def install(secrets: Iterable[str] = (), env: Mapping[str, str] | None = None) -> Redactor:
    """Put one ``RedactingFilter`` on every root handler (call after ``logging.basicConfig``).

    ``secrets`` are values to mask beyond the environment's (a token read from a file).
    Returns the redactor, for text printed outside logging.
    """
    redactor = Redactor([*secrets, *secrets_from(os.environ if env is None else env)])
    found = RedactingFilter(redactor)
    for handler in [*logging.getLogger().handlers, logging.lastResort]:
        if handler is None:
            continue
        for old in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
            handler.removeFilter(old)
        handler.addFilter(found)
    return redactor
