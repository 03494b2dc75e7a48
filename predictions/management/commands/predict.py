"""Classify texts in this process, without broker or database: a quick check of a model."""

from __future__ import annotations

import json

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from predictions.registry import UnknownModel, classifier_get, model_exists
from textclf import ModelLoadError


class Command(BaseCommand):
    help = "Print label, score and top scores for each text, e.g.: predict sentiment 'a gorgeous film'"

    def add_arguments(self, parser) -> None:
        parser.add_argument("model")
        parser.add_argument("texts", nargs="+")
        parser.add_argument("--top", type=int, default=3, help="how many top scores to show")
        parser.add_argument("--json", action="store_true", dest="as_json", help="one JSON object per text")

    def handle(self, *args, model: str, texts: list[str], top: int, as_json: bool, **options) -> None:
        if not model_exists(model):
            raise CommandError(str(UnknownModel(model)))
        try:
            classifier = classifier_get(model)
        except ModelLoadError as exc:
            raise CommandError(str(exc)) from exc
        for text, result in zip(texts, classifier.predict(texts, batch_size=settings.PASS_MAX_TEXTS), strict=True):
            best = dict(sorted(result.scores.items(), key=lambda item: item[1], reverse=True)[:top])
            if as_json:
                self.stdout.write(
                    json.dumps(
                        {
                            "text": text,
                            "label": result.label,
                            "score": result.score,
                            "labels": result.labels,
                            "top": best,
                            "model": model,
                            "version": classifier.version,
                        },
                        ensure_ascii=False,
                    )
                )
                continue
            extra = f"  labels={','.join(result.labels)}" if classifier.kind.value == "multi_label" else ""
            tops = "  ".join(f"{label}={score:.3f}" for label, score in best.items())
            self.stdout.write(f"{result.label}\t{result.score:.3f}\t{tops}{extra}\t{text}")
