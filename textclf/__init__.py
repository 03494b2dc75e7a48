"""The text classifier: serving (textclf.serving) and training (textclf.training), free of any web framework.

Heavy imports (torch, transformers) happen inside functions or in the modules that need them, never
in this package, textclf.serving or textclf.serving.loading, so a web process can import the errors,
the types and `model_info` without paying for them.
"""

from textclf.errors import ChecksumMismatch, DatasetFormatError, ModelLoadError
from textclf.types import LabelScores, ModelKind

__all__ = [
    "ChecksumMismatch",
    "DatasetFormatError",
    "LabelScores",
    "ModelKind",
    "ModelLoadError",
]
