"""Write the reviewed predictions of a model as training data, in its dataset's format, for `train_model --extra-data`."""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from predictions.registry import UnknownModel, model_info_get
from predictions.selectors import reviewed_examples
from textclf import ModelKind, ModelLoadError


def _one_line(text: str) -> str:
    """The dataset formats hold one example a line, columns split by tabs."""
    return " ".join(text.split())


class Command(BaseCommand):
    help = (
        "Export confirmed and corrected predictions of MODEL as training rows: single-label models in SST-2's "
        "format (label<TAB>sentence), multi-label ones in GoEmotions' (text<TAB>label ids<TAB>id)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("model", help="e.g. sentiment")
        parser.add_argument("--out", type=Path, required=True, help="the file to write (replaced if it exists)")

    def handle(self, *args, model: str, out: Path, **options) -> None:
        try:
            info = model_info_get(model)
        except (UnknownModel, ModelLoadError, OSError) as exc:
            raise CommandError(f"model: {exc}") from None
        index = {label: i for i, label in enumerate(info.labels)}
        counts = {"rows": 0, "confirmed": 0, "corrected": 0, "skipped": 0}
        try:
            handle = open(out, "w", encoding="utf-8")  # noqa: SIM115 (closed below, after the rows)
        except OSError as exc:
            raise CommandError(f"--out: {exc}") from None
        with handle:
            if info.kind is ModelKind.SINGLE_LABEL:
                handle.write("label\tsentence\n")
            for pk, text, labels, corrected in reviewed_examples(model):
                chosen = [corrected] if corrected else labels
                ids = sorted({index[label] for label in chosen if label in index})
                line = _one_line(text)
                if not ids or not line or (info.kind is ModelKind.SINGLE_LABEL and len(ids) != 1):
                    counts["skipped"] += 1
                    continue
                if info.kind is ModelKind.SINGLE_LABEL:
                    handle.write(f"{ids[0]}\t{line}\n")
                else:
                    handle.write(f"{line}\t{','.join(map(str, ids))}\tmlsite-{pk}\n")
                counts["rows"] += 1
                counts["corrected" if corrected else "confirmed"] += 1
        self.stdout.write(json.dumps({"model": model, "out": str(out), **counts}))
