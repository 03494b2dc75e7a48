"""Quality per model version for the admin overview: what reviewers say of each version's answers,
how confident and how well calibrated it is, and how far recent traffic has drifted from its training data.

- Agreement on the **audit sample** (drawn at random when predictions were made) estimates the share of
  answers reviewers agree with, with a 95 % Wilson interval; on **all reviews** it is biased, the
  review queue putting uncertain answers first, and shown as such.
- Reliability: reviewed answers binned by the model's top score; a calibrated model's accuracy in a
  bin is the bin's confidence.
- Drift: the label shares of the latest traffic against the training data's (read from DATASETS_DIR
  when the model's dataset is there), and their total variation distance: half the sum of the
  absolute differences, 0 when alike, 1 when disjoint.
"""

from __future__ import annotations

import functools
from collections import Counter
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from predictions.models import ModelVersion, Prediction, PredictionStatus
from predictions.overview import wilson_interval
from predictions.registry import UnknownModel, model_info_get
from textclf import ModelKind, ModelLoadError

REVIEWED_SAMPLE = 50_000  # reviewed answers read per version, newest first
RECENT_SAMPLE = 10_000  # recent answers read for the confidence histogram and the label shares
RECENT_DAYS = 7
CONFIDENCE_BINS = 10


@functools.cache
def training_label_shares(model_name: str, labels: tuple[str, ...], datasets_dir: Path) -> dict[str, float] | None:
    """Each label's share of the training rows (multi-label: of the rows carrying it, normalised), or
    None when the model has no bundled recipe with these labels or its dataset is not at hand."""
    from textclf.training.recipes import RECIPES  # noqa: PLC0415 (reads datasets only when asked)

    recipe = RECIPES.get(model_name)
    path = recipe.split(datasets_dir, "train") if recipe else None
    if recipe is None or path is None or not path.is_file() or tuple(recipe.labels(datasets_dir)) != labels:
        return None
    counts: Counter[str] = Counter()
    for example in recipe.reader(datasets_dir)(path):
        counts.update(labels[i] for i in example.label_ids)
    total = sum(counts.values()) or 1
    return {label: counts[label] / total for label in labels}


def total_variation(p: dict[str, float], q: dict[str, float]) -> float:
    """Half the sum of the absolute differences between two distributions over labels."""
    return 0.5 * sum(abs(p.get(label, 0.0) - q.get(label, 0.0)) for label in set(p) | set(q))


def _shares(counts: Counter[str]) -> dict[str, float]:
    total = sum(counts.values())
    return {label: n / total for label, n in counts.items()} if total else {}


def version_quality(model_name: str, version: str) -> dict:
    """What the review desk knows of one version's answers (see the module's docstring)."""
    reviewed = list(
        Prediction.objects.filter(
            model_name=model_name, model_version=version, status=PredictionStatus.SUCCEEDED, reviewed_at__isnull=False
        )
        .order_by("-reviewed_at")
        .values_list("label", "corrected_label", "score", "review_sample")[:REVIEWED_SAMPLE]
    )
    agree = [(label == (corrected or label), sample, score) for label, corrected, score, sample in reviewed]
    sample = [ok for ok, drawn, _ in agree if drawn]
    confusion = Counter((label, corrected or label) for label, corrected, _, _ in reviewed)
    bins: list[list[int]] = [[0, 0] for _ in range(CONFIDENCE_BINS)]  # [answers, right] per confidence bin
    for ok, _, score in agree:
        if score is not None:
            index = min(CONFIDENCE_BINS - 1, int(score * CONFIDENCE_BINS))
            bins[index][0] += 1
            bins[index][1] += ok
    return {
        "version": version,
        "reviewed": len(reviewed),
        "sample_reviewed": len(sample),
        "sample_agreement": sum(sample) / len(sample) if sample else None,
        "sample_interval": wilson_interval(sum(sample), len(sample)),
        "all_agreement": sum(ok for ok, _, _ in agree) / len(agree) if agree else None,
        "confusion": confusion,
        "reliability": [
            ((i + 0.5) / CONFIDENCE_BINS, n, right / n if n else None) for i, (n, right) in enumerate(bins)
        ],
    }


def model_quality(model_name: str) -> dict:
    """Quality of every version of a model that answered predictions (the served one first), the
    confidence of its latest answers, and the drift of their labels from the training data's."""
    try:
        info = model_info_get(model_name)
    except (UnknownModel, ModelLoadError, OSError):
        return {"model": model_name, "versions": [], "labels": []}
    served = info.version
    registered = list(ModelVersion.objects.filter(name=model_name).values_list("version", flat=True))
    versions = [served, *(v for v in registered if v != served)]
    since = timezone.now() - timedelta(days=RECENT_DAYS)
    recent = list(
        Prediction.objects.filter(model_name=model_name, status=PredictionStatus.SUCCEEDED, created_at__gte=since)
        .order_by("-pk")
        .values_list("label", "labels", "score")[:RECENT_SAMPLE]
    )
    counts: Counter[str] = Counter()
    for label, labels, _ in recent:
        counts.update(labels if info.kind is ModelKind.MULTI_LABEL and labels else [label])
    recent_shares = _shares(counts)
    training = training_label_shares(model_name, tuple(info.labels), settings.DATASETS_DIR)
    histogram = [0] * CONFIDENCE_BINS
    for _, _, score in recent:
        if score is not None:
            histogram[min(CONFIDENCE_BINS - 1, int(score * CONFIDENCE_BINS))] += 1
    return {
        "model": model_name,
        "labels": info.labels,
        "versions": [
            q for q in (version_quality(model_name, v) for v in versions) if q["reviewed"] or q["version"] == served
        ],
        "recent": len(recent),
        "recent_shares": recent_shares,
        "training_shares": training,
        "drift": total_variation(recent_shares, training) if training and recent_shares else None,
        "confidence_histogram": [
            (f"{i / CONFIDENCE_BINS:.1f}–{(i + 1) / CONFIDENCE_BINS:.1f}", n) for i, n in enumerate(histogram)
        ],
    }
