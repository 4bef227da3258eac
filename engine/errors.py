"""Engine errors that callers catch without loading the engine (no torch here)."""


class EngineStopped(RuntimeError):
    """The engine's thread has stopped (shut down, or crashed): nothing runs any more."""
