"""Errors a user can act on. Each message says what is wrong, where, and how to fix it."""


class SiftbenchError(Exception):
    """Base class: the CLI prints these as one clear line instead of a traceback."""


class ConfigError(SiftbenchError):
    """A configuration value is missing, unknown or contradictory."""


class PoolError(SiftbenchError):
    """The pool folder does not have the DataComp layout, or a file in it is unreadable."""


class SubsetError(SiftbenchError):
    """A subset file breaks the DataComp contract (dtype, order, pickles, unknown uids)."""


class MissingColumnError(PoolError):
    """A filter needs a metadata column or embedding the pool does not have."""


class StageError(SiftbenchError):
    """A pipeline stage (train, evaluate, ...) failed in a way the user must look at."""
