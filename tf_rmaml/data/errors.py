"""The one exception type of the data layer."""


class DataError(ValueError):
    """Data is missing, corrupt, or asked for in a way that cannot work.

    The message always names the file or argument at fault and says how to fix
    it (where to put a file, which command to run, which values are valid).
    """
