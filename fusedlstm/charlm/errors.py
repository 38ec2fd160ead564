"""Errors of the char-level language model that a user can act on.

The command line prints their message (no traceback) and exits with status 1.
"""


class CharLMError(Exception):
    """Bad input or a state the user must fix: the message says what and how."""


class TrainingDiverged(CharLMError):
    """The loss or the gradient norm became NaN or infinite; nothing was saved
    after the last good checkpoint."""
