"""Errors a user can fix. The entry points print these as one line and exit non-zero,
instead of a traceback; anything else is a bug and keeps its traceback."""


class EventSegError(Exception):
    """Base class: the message alone must tell the user what is wrong and where."""

    def __str__(self) -> str:
        text = super().__str__()
        # Raised in a DataLoader worker, the error reaches the main process re-raised as the same
        # type with "Caught ... in DataLoader worker process N. Original Traceback ..." around
        # the message: the user's one line is the last line of that text.
        if "Original Traceback" in text:
            last = text.strip().splitlines()[-1]
            _, sep, message = last.partition("Error: ")
            return message if sep else last
        return text


class ConfigError(EventSegError, ValueError):
    """A config value that composes but cannot be used."""


class DatasetError(EventSegError, RuntimeError):
    """A dataset that is missing, incomplete or corrupt; the message names the culprit."""


class NonFiniteLossError(EventSegError, FloatingPointError):
    """The loss (or the weights) stopped being finite; the message names epoch and batch."""


class CheckpointError(EventSegError, RuntimeError):
    """A checkpoint that is missing, corrupt or unsafe to load; the message names the file."""
