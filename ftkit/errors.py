"""The one base class for errors a user can act on.

Every module raises its own subclass; the CLI turns any `FtkitError` into a one-line message and
exit code 2, so a traceback means a bug in ftkit, never bad input.
"""


class FtkitError(Exception):
    """An error caused by the user's input or environment, with a message that says how to fix it."""


class RowError(FtkitError):
    """A data row that cannot become an example (missing field, empty text, unknown label)."""
