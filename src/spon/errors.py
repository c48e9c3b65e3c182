"""One exception type for every user-facing failure: the CLI prints its message as one line."""

__all__ = ["SponError"]


class SponError(Exception):
    """A problem with the user's input or environment; the message says what is wrong and how to fix it."""
