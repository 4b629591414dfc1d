"""Logging for the proxy: one line per stage on stderr (Jupyter's log), with host and kernel id.

The session key must never reach a log: nothing logs it on purpose, and ``RedactFilter`` replaces
it anyway should it ever appear in a message (e.g. inside a relayed remote traceback).
"""
from __future__ import annotations

import logging
import re
import sys
from typing import Any, MutableMapping, Optional, Tuple

LOGGER_NAME = "ssh_ipykernel"


class KernelLogAdapter(logging.LoggerAdapter):
    """Prefixes messages with ``[host kernel]`` so lines from several kernels can be told apart."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> Tuple[Any, MutableMapping[str, Any]]:
        extra = self.extra or {}
        return f"[{extra.get('host', '?')} {str(extra.get('kernel', '?'))[:8]}] {msg}", kwargs


def redact_text(text: str, secret: str) -> str:
    """``text`` with ``secret`` replaced; secrets too short to be keys are left alone."""
    if len(secret) >= 8 and secret in text:
        return text.replace(secret, "<key>")
    return text


class RedactFilter(logging.Filter):
    """Replace a secret in every record that passes through the handler."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message, self.secret)
        if redacted is not message:
            record.msg = redacted
            record.args = None
        return True


def setup_logging(level: str = "INFO", log_file: Optional[str] = None) -> logging.Logger:
    """Configure the package logger once: stderr always, plus a file if asked."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level.upper())
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)s ssh_ipykernel %(message)s", "%H:%M:%S")
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file))
    logger.handlers.clear()
    for handler in handlers:
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger


def redact(secret: str) -> None:
    """Install the redaction filter for ``secret`` on every handler of the package logger."""
    for handler in logging.getLogger(LOGGER_NAME).handlers:
        handler.addFilter(RedactFilter(secret))


_OPEN_FAILED_RE = re.compile(r"channel \d+: open failed: connect failed")


def log_ssh_output(log: "logging.LoggerAdapter[Any]", text: str) -> None:
    """What ssh printed, one log line per line."""
    for line in text.replace("\r", "").splitlines():
        if not line.strip():
            continue
        # Clients connect before the remote kernel has bound its ports; ZMQ retries, so
        # these refusals during boot are expected and only worth a debug line.
        level = logging.DEBUG if _OPEN_FAILED_RE.search(line) else logging.INFO
        log.log(level, "ssh: %s", line.strip())


def relay_remote_output(text: str, secret: str) -> None:
    """The kernel's own log goes to our stderr, which Jupyter logs; never the key."""
    text = redact_text(text, secret)
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
