"""Errors that reach a user as one clear line: the command lines print them without a traceback."""

from tf_rmaml.data.errors import DataError


class ConfigError(ValueError):
    """A flag, or a combination of flags, that cannot work. The message says how to fix it."""


USER_ERRORS = (ConfigError, DataError, FileNotFoundError)
