"""Fine-tune a bundled classifier on its dataset and write adapter + model card."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from predictions.registry import BUNDLED_MODELS_DIR
from predictions.services.versions import model_version_register
from textclf import ModelLoadError
from textclf.errors import DatasetFormatError
from textclf.serving.loading import ADAPTER_FILE, classifier_load, source_directory
from textclf.training.datasets import labels_balanced
from textclf.training.recipes import RECIPES
from textclf.types import ModelKind


class Command(BaseCommand):
    help = "Train a bundled model (LoRA + head over all-MiniLM-L6-v2) on its dataset in DATASETS_DIR."

    def add_arguments(self, parser) -> None:
        parser.add_argument("model", choices=["sentiment", "emotions"])
        parser.add_argument("--epochs", type=int, help="default: 2 (both models)")
        parser.add_argument("--out", type=Path, help="output directory (default: the bundled model's directory)")
        parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--batch-size", type=int, default=32)
        parser.add_argument(
            "--lr-scale",
            type=float,
            default=1.0,
            help="multiply the recipe's learning rates (adapter and head), e.g. 0.5 to fine-tune --init-from gently",
        )
        parser.add_argument(
            "--keep",
            type=float,
            default=1.0,
            help="with --init-from: keep this share of the fine-tuning's change, each served weight moved back "
            "toward the version it started from (weight-space averaging, e.g. 0.5; the adapter written has twice "
            "the LoRA rank; docs/models.md). Default 1",
        )
        parser.add_argument(
            "--balance-extra",
            action="store_true",
            help="repeat the --extra-data rows of rarer labels until each label is as frequent as the most "
            "frequent one (single-label models): reviews skew toward the labels the model missed",
        )
        parser.add_argument("--limit", type=int, help="train on the first N rows only (smoke runs)")
        parser.add_argument(
            "--distill-replay",
            action="store_true",
            help="with --init-from: the dataset's rows learn the starting version's scores (softened) rather "
            "than their labels, and --extra-data rows their labels (learning without forgetting; docs/models.md)",
        )
        parser.add_argument(
            "--replay-uncertain",
            action="store_true",
            help="with --init-from and --limit N: the N dataset rows the starting version is least sure of "
            "(smallest margin), not the first N: the rows whose answers fine-tuning on new data moves first",
        )
        parser.add_argument(
            "--replay-min-words",
            type=int,
            default=0,
            help="replay only the dataset's rows of at least this many words (with --limit N: the first N of them), "
            "e.g. 12 to replay whole sentences rather than SST-2's short phrases",
        )
        parser.add_argument("--datasets-dir", type=Path, default=None)
        parser.add_argument(
            "--init-from",
            help="start from this adapter (bundled:NAME or path:DIR) instead of a fresh one: the served version "
            "fine-tuned further, e.g. on --extra-data with --limit rows of the dataset replayed beside them",
        )
        parser.add_argument(
            "--extra-data",
            type=Path,
            action="append",
            default=[],
            help="more training rows in the dataset's format (export_reviews writes them); repeatable. "
            "The result is registered as a candidate version of the model, never written over the bundled one",
        )

    def handle(self, *args, **options) -> None:
        import torch  # noqa: PLC0415 (torch loads lazily: only when the command runs)

        from textclf.serving.classifier import device_resolve  # noqa: PLC0415 (torch loads lazily: only when the command runs)
        from textclf.training.evaluation import classifier_evaluate  # noqa: PLC0415 (torch loads lazily: only when the command runs)
        from textclf.training.fine_tuning import TrainConfig, model_train  # noqa: PLC0415 (torch loads lazily: only when the command runs)
        from textclf.training.model_card import model_card_write  # noqa: PLC0415 (torch loads lazily: only when the command runs)

        recipe = RECIPES[options["model"]]
        datasets_dir = options["datasets_dir"] or settings.DATASETS_DIR
        train_path, dev_path = recipe.split(datasets_dir, "train"), recipe.split(datasets_dir, "dev")
        for path in (train_path, dev_path):
            if not path.is_file():
                raise CommandError(f"dataset file not found: {path} (set DATASETS_DIR or --datasets-dir)")
        device = device_resolve(options["device"])
        torch.set_num_threads(os.cpu_count() or 1)

        labels = recipe.labels(datasets_dir)
        reader = recipe.reader(datasets_dir)
        train, dev = reader(train_path), reader(dev_path)
        train = _dataset_rows(train, options, name=recipe.name, device=str(device))
        extra = _extra_rows(
            reader, options["extra_data"], kind=recipe.kind, balance=options["balance_extra"], seed=options["seed"]
        )
        if extra and not options["out"]:
            raise CommandError(
                "--extra-data: give --out DIR: a model trained on reviews is a candidate, not the bundled one"
            )
        hyper = _hyperparameters(recipe.defaults, options)
        if options["distill_replay"]:
            hyper["distill_rows"] = len(train)  # the dataset's rows, first; the extra rows after them
        train = train + extra
        config = TrainConfig(
            name=recipe.name,
            kind=recipe.kind,
            labels=labels,
            seed=options["seed"],
            device=str(device),
            batch_size=options["batch_size"],
            **hyper,
        )
        out_dir = options["out"] or BUNDLED_MODELS_DIR / recipe.name
        more = f" + {len(extra):,} extra" if extra else ""
        self.stdout.write(
            f"training {recipe.name} on {len(train) - len(extra):,} rows of {train_path.name}{more} ({device}), "
            f"writing to {out_dir}"
        )
        init_from = _adapter_file(options["init_from"]) if options["init_from"] else None
        result = model_train(
            config,
            train,
            dev,
            out_dir,
            init_from=init_from,
            progress=lambda steps: tqdm(steps, desc=f"{recipe.name}", unit="step", file=sys.stderr, mininterval=5),
            log=self.stdout.write,
        )
        source = f"path:{out_dir}"
        packed = settings.INFERENCE_PACKED  # measured as it will be served
        metrics = classifier_evaluate(classifier_load(recipe.name, source, device=str(device), packed=packed), dev)
        metrics_int8 = classifier_evaluate(
            classifier_load(recipe.name, source, device="cpu", int8=True, packed=packed), dev
        )
        command_line = _command_line(recipe.name, config.epochs, options)
        environment = (
            f"{device.type} ({torch.get_num_threads()} threads, {platform.machine()}), torch {torch.__version__}"
        )
        if device.type == "cuda":
            environment = f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
        card = model_card_write(
            out_dir,
            config=result.config,
            result=result,
            dataset=recipe.dataset,
            command=command_line,
            metrics=metrics,
            metrics_int8=metrics_int8,
            environment=environment,
        )
        self.stdout.write(
            f"wrote {result.adapter_path} ({result.adapter_path.stat().st_size / 1024:.0f} KiB) and {card}"
        )
        report: dict[str, Any] = {"fp32": metrics, "int8": metrics_int8}
        if extra:
            version, _ = model_version_register(
                name=recipe.name,
                source=source,
                metrics={f"dev_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))},
                note=f"train_model with {len(extra):,} extra rows from "
                + ", ".join(p.name for p in options["extra_data"]),
            )
            self.stdout.write(f"registered {version} (promote it from the admin's Model versions)")
            report["candidate"] = {"id": version.pk, "version": version.version, "state": version.state}
        self.stdout.write(json.dumps(report))


def _command_line(name: str, epochs: int, options: dict[str, Any]) -> str:
    """The command as the model card records it: the options that shaped the weights."""
    line = (
        f"python manage.py train_model {name} --epochs {epochs} --seed {options['seed']} --device {options['device']}"
    )
    for flag in ("balance_extra", "replay_uncertain", "distill_replay"):
        if options[flag]:
            line += f" --{flag.replace('_', '-')}"
    for flag in ("replay_min_words", "limit", "init_from"):
        if options[flag]:
            line += f" --{flag.replace('_', '-')} {options[flag]}"
    for flag in ("lr_scale", "keep"):
        if options[flag] != 1.0:
            line += f" --{flag.replace('_', '-')} {options[flag]:g}"
    return line + "".join(f" --extra-data {p.name}" for p in options["extra_data"])


def _adapter_file(source: str) -> Path:
    """--init-from: the adapter file of a source (bundled:NAME or path:DIR)."""
    try:
        path = source_directory(source, bundled_dir=BUNDLED_MODELS_DIR) / ADAPTER_FILE
    except ModelLoadError as exc:
        raise CommandError(f"--init-from: {exc}") from None
    if not path.is_file():
        raise CommandError(f"--init-from: no {ADAPTER_FILE} in {path.parent}")
    return path


def _dataset_rows(train: list, options: dict[str, Any], *, name: str, device: str) -> list:
    """The dataset's rows to train on: those of --replay-min-words words or more, then the --limit
    the starting version is least sure of (--replay-uncertain) or the first --limit of them."""
    if options["replay_min_words"]:
        train = _rows_of_words(train, options["replay_min_words"])
    if options["replay_uncertain"]:
        return _rows_least_sure(train, options, name=name, device=device)
    return train[: options["limit"]] if options["limit"] else train


def _rows_least_sure(train: list, options: dict[str, Any], *, name: str, device: str) -> list:
    """--replay-uncertain: the --limit rows the --init-from version answers with the smallest margin,
    in the dataset's order. Rows it is sure of barely move its weights when replayed."""
    if not (options["init_from"] and options["limit"]):
        raise CommandError("--replay-uncertain needs --init-from (the version whose margins choose) and --limit N")
    _adapter_file(options["init_from"])  # the same error as --init-from's when there is no adapter
    classifier = classifier_load(name, options["init_from"], bundled_dir=BUNDLED_MODELS_DIR, device=device)
    answers = classifier.predict([example.text for example in train])
    margins = [answer.margin if answer.margin is not None else 1.0 for answer in answers]
    order = sorted(range(len(train)), key=margins.__getitem__)
    return [train[i] for i in sorted(order[: options["limit"]])]


def _rows_of_words(train: list, words: int) -> list:
    """--replay-min-words: the dataset's rows of at least `words` words, in its order."""
    if words < 1:
        raise CommandError("--replay-min-words must be 1 or more")
    kept = [example for example in train if len(example.text.split()) >= words]
    if not kept:
        raise CommandError(f"--replay-min-words: no row of the dataset has {words} words or more")
    return kept


def _extra_rows(reader, paths: list[Path], *, kind: ModelKind, balance: bool, seed: int) -> list:
    """--extra-data: the rows of each file, read as the dataset is; a malformed file names its line.
    With --balance-extra, the rarer label's rows repeated until the labels are as frequent."""
    if balance and kind is not ModelKind.SINGLE_LABEL:
        raise CommandError("--balance-extra: for single-label models only")
    rows = []
    for path in paths:
        try:
            rows += reader(path)
        except (OSError, DatasetFormatError) as exc:
            raise CommandError(f"--extra-data: {exc}") from None
    return labels_balanced(rows, seed=seed) if balance else rows


def _hyperparameters(defaults: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The recipe's training settings with the command's: its epochs, its learning rates scaled, the
    share of the change it keeps."""
    from textclf.training.fine_tuning import TrainConfig  # noqa: PLC0415 (torch loads lazily: only when the command runs)

    epochs, lr_scale, keep = options["epochs"], options["lr_scale"], options["keep"]
    if lr_scale <= 0:
        raise CommandError("--lr-scale must be above 0")
    if not 0 < keep <= 1:
        raise CommandError("--keep must be above 0 and at most 1")
    if keep != 1.0 and not options["init_from"]:
        raise CommandError("--keep needs --init-from: the weights it moves back toward")
    if options["distill_replay"] and not options["init_from"]:
        raise CommandError("--distill-replay needs --init-from: the version whose scores the dataset's rows learn")
    hyper = {**defaults, "keep": keep}
    if epochs:
        hyper["epochs"] = epochs
    if lr_scale != 1.0:
        for rate in ("learning_rate", "head_learning_rate"):
            hyper[rate] = hyper.get(rate, getattr(TrainConfig, rate)) * lr_scale
    return hyper
