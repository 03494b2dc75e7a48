"""Model loading and inference, free of Django so it can be tested and benchmarked alone.

Heavy imports (torch, transformers) happen inside functions, never at import time,
so the web process can import this package without paying for them.
"""

from .errors import ChecksumMismatch, DatasetFormatError, ModelLoadError
from .types import LabelScores, ModelKind

__all__ = [
    "ChecksumMismatch",
    "DatasetFormatError",
    "LabelScores",
    "ModelKind",
    "ModelLoadError",
]
