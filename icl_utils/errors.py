"""Errors with messages that say what to do. Each is also a ValueError/OSError, so broad handlers work."""


class ModelNotAvailableError(OSError):
    """The model cannot be loaded here (not embedded, not cached, no network, or not installed)."""


class LabelWordError(ValueError):
    """A label word is not exactly one token for this tokenizer."""


class PromptTooLongError(ValueError):
    """A prompt has more tokens than the model's context."""


class TaskFormatError(ValueError):
    """A task data file is malformed."""
