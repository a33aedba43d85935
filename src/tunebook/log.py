"""One logger for the whole package: ``[tunebook] message`` lines, from the main process only.

Every module logs through ``logger = tunebook.log.get_logger()`` (the ``tunebook`` logger of the
standard `logging` module), never through ``print``: applications can then silence, redirect or
reformat tunebook's messages like any library's, and under ``accelerate launch`` only rank 0
speaks (every rank runs the same code, so N GPUs would otherwise print every line N times).

Importing tunebook changes no global state. The handler is attached to the ``tunebook`` logger
(never the root logger) the first time a module asks for it, as `transformers` does for its own
logger, so ``python -m tunebook`` and notebooks show INFO lines without any setup; set the level
with ``TUNEBOOK_LOG_LEVEL=WARNING`` or ``logging.getLogger("tunebook").setLevel(...)``.
"""

from __future__ import annotations

import logging
import os
import sys

_NAME = "tunebook"
_handler: logging.Handler | None = None


def is_main_process() -> bool:
    """True on rank 0 (or without a launcher). accelerate and torchrun set RANK for every process."""
    return int(os.environ.get("RANK", "0")) == 0


class _MainProcessOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return is_main_process()


class _Formatter(logging.Formatter):
    """``[tunebook] message``; warnings and errors say so (``[tunebook] warning: ...``)."""

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"[tunebook] {level}{record.getMessage()}"


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time of the call.

    stdout, not stderr: these are progress lines read in order with the Trainer's own output, and
    notebooks show stderr in red as if it were an error. Looked up per call because Jupyter,
    pytest and ``contextlib.redirect_stdout`` replace ``sys.stdout`` after this module is imported.
    """

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property wins
        pass


def get_logger() -> logging.Logger:
    """The ``tunebook`` logger, with its handler attached on first use."""
    global _handler
    logger = logging.getLogger(_NAME)
    if _handler is None:
        _handler = _StdoutHandler()
        _handler.setFormatter(_Formatter())
        _handler.addFilter(_MainProcessOnly())
        logger.addHandler(_handler)
        logger.setLevel(os.environ.get("TUNEBOOK_LOG_LEVEL", "INFO").upper())
        logger.propagate = False  # the root logger (if configured) would print every line twice
    return logger
