"""Score a registered model on a labelled TSV; the last line printed is one JSON object."""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from predictions.registry import BUNDLED_MODELS_DIR, UnknownModel, model_exists
from textclf import DatasetFormatError, ModelLoadError
from textclf.serving.loading import classifier_load
from textclf.training.recipes import dataset_reader


class Command(BaseCommand):
    help = (
        "Evaluate MODEL on PATH.tsv (SST-2 format for single-label models, GoEmotions format for multi-label). "
        "Prints {model, version, n, accuracy} or {model, version, n, macro_f1, micro_f1, top1_accuracy} as its last line."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("model")
        parser.add_argument("path", type=Path)
        parser.add_argument("--batch-size", type=int, default=64)
        parser.add_argument("--int8", action="store_true", help="evaluate the int8 dynamically-quantized variant")
        parser.add_argument("--device", default=None, help="cpu, cuda or auto (default: INFERENCE_DEVICE)")

    def handle(self, *args, model: str, path: Path, batch_size: int, int8: bool, device: str | None, **options) -> None:
        from textclf.training.evaluation import classifier_evaluate  # noqa: PLC0415 (torch loads lazily: only when the command runs)

        if not model_exists(model):
            raise CommandError(str(UnknownModel(model)))
        if not path.is_file():
            raise CommandError(f"{path}: no such file")
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        device = "cpu" if int8 else (device or settings.INFERENCE_DEVICE)
        try:
            classifier = classifier_load(
                model,
                settings.MLSITE_MODELS[model],
                bundled_dir=BUNDLED_MODELS_DIR,
                device=device,
                int8=int8,
                packed=settings.INFERENCE_PACKED,
            )
            examples = dataset_reader(classifier.kind, n_labels=len(classifier.labels))(path)
        except (DatasetFormatError, ModelLoadError) as exc:
            raise CommandError(str(exc)) from exc
        self.stderr.write(
            f"evaluating {model} {classifier.version} ({'int8' if int8 else device}) on {len(examples)} rows of {path}"
        )
        result = classifier_evaluate(classifier, examples, batch_size=batch_size)
        if int8:
            result["int8"] = True
        self.stdout.write(json.dumps(result))
