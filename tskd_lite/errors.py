"""The one exception a user sees: its message is a single line that names the file, key or path at fault."""


class TskdError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""
