"""Errors textclf raises; callers map them to user-facing messages."""


class ModelLoadError(RuntimeError):
    """A model could not be loaded from its source (missing files, hub unreachable, bad format)."""


class ChecksumMismatch(ModelLoadError):
    """A weight file on disk is not the one this project was trained against."""


class DatasetFormatError(ValueError):
    """A dataset file does not follow its expected format; the message names the line."""
