"""Whoever logs a secret (message, arguments, exception, stack), the log shows it masked."""

from __future__ import annotations

import io
import logging

from generator.logsafe import RedactingFilter, Redactor

TOKEN = "123456:a-token-we-were-told"
KEY = "AIza" + "x" * 35  # a Google API key nobody told us about
HF = "hf_" + "y" * 34


def logged(emit) -> str:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactingFilter(Redactor([TOKEN])))
    logger = logging.getLogger("tests.logsafe")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    return out.getvalue()


def test_secrets_in_messages_arguments_tracebacks_and_stacks_are_masked() -> None:
    def emit(log: logging.Logger) -> None:
        log.warning("The token `%s` was rejected by the server.", TOKEN)
        log.warning("Set Bot API URL: https://user:pa55@example.org/bot%s", TOKEN)
        log.warning("keys %s %s and https://x.test/v1?key=abc123&alt=json", KEY, HF)
        try:
            raise RuntimeError(f"refused {TOKEN}")
        except RuntimeError:
            log.exception("failed", stack_info=True)

    text = logged(emit)

    for secret in (TOKEN, "pa55", KEY, HF, "abc123"):
        assert secret not in text
    assert "The token `***` was rejected" in text
    assert "https://***@example.org/bot***" in text
    assert "RuntimeError: refused ***" in text and "Stack (most recent call last)" in text
    assert "?key=***&alt=json" in text
