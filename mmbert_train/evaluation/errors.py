"""The error type of held-out evaluation."""


class EvalError(ValueError):
    """Bad input to the evaluation; the message names the file, language or option and what was expected."""
