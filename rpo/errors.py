"""Errors that name what is wrong: the file, the row or the config key, and the problem."""


class DataError(ValueError):
    """Bad input data: the message names the file, the row (1-based) and the problem."""


class ConfigError(ValueError):
    """Bad configuration: the message names the config key."""


class CacheMismatchError(RuntimeError):
    """A cached artefact (reference log-probs, embeddings) belongs to other data or another model."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or inf."""
