"""Exceptions shared by the model loaders."""


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or does not match the model it should fill.

    The message always names the file and, where relevant, the offending keys.
    """
