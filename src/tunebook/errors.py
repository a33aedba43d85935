"""The errors a user can fix, as one family: the CLI prints their message alone and exits with 2.

Every message says what is wrong, where (file and 1-based row or line, or the config key), the
value received, and the fix. Anything else that escapes is a bug in tunebook and keeps its
traceback (``python -m tunebook --debug ...`` shows it for these too).
"""

from __future__ import annotations


class TunebookError(Exception):
    """Base class: a problem in the user's config, data, files or environment, with its fix."""


class TemplateError(TunebookError, ValueError):
    """A tokenizer's chat template cannot be used to build prompts and trained answers."""


class RunFolderError(TunebookError):
    """A run folder holds work that the requested command would replace, or lacks what it needs."""


class ConfigError(TunebookError, ValueError):
    """A configuration value or key is wrong; the message says which (file, line, key) and how to fix it."""


class DataValidationError(TunebookError, ValueError):
    """The data cannot be trained on as it is; the message names the file, line and field, and the fix."""
