"""User-facing error types: the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """A mistake in what the user gave us (path, file, option); message is shown as-is."""


class SourceError(UserError):
    """A frame source cannot be opened or a frame in it cannot be read."""
