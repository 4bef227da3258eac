"""The one error every reader of a checkpoint directory raises."""


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message names what is wrong."""
