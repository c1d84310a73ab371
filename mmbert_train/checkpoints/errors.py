"""The one error type of checkpoint I/O."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or written as asked; the message names the file (and the tensor)."""
