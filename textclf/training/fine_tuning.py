"""Fine-tuning the bundled classifiers: LoRA on every encoder linear layer plus a linear head.

Deterministic for a given seed and device. The output directory holds adapter.safetensors (LoRA
factors and head in fp16, thresholds, labels and base checksum in its metadata) and README.md,
the model card, whose figures come from re-loading the written file through the serving loader.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from textclf.serving.base_encoder import BASE_PACKAGE, BASE_PACKAGE_VERSION, BASE_WEIGHTS_SHA256, base_encoder_load
from textclf.serving.classifier import MeanPooledClassifier
from textclf.serving.loading import ADAPTER_FILE, ADAPTER_FORMAT, adapter_metadata
from textclf.training.datasets import Example
from textclf.training.evaluation import gold_matrix
from textclf.training.lora import LoRALinear, lora_attach, lora_state_dict
from textclf.training.metrics import accuracy, multilabel_scores, thresholds_tune
from textclf.types import ModelKind

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class TrainConfig:
    name: str
    kind: ModelKind
    labels: list[str]
    epochs: int = 1
    batch_size: int = 32
    max_length: int = 64
    serve_max_length: int = 128
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.1
    head_dropout: float = 0.1
    learning_rate: float = 5e-4
    head_learning_rate: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    tune_fraction: float = 0.1
    seed: int = 0
    device: str = "cpu"
    # With init_from: the share of the fine-tuning's change kept in the written weights, each weight
    # init + keep × (trained - init) (weight-space ensembling; docs/models.md); 1: the trained weights.
    keep: float = 1.0
    # With init_from: the first distill_rows training rows (the dataset's, replayed beside new data)
    # learn the starting adapter's scores, softened at distill_temperature, instead of their labels
    # (learning without forgetting; docs/models.md); the rows after them learn their labels.
    distill_rows: int = 0
    distill_temperature: float = 2.0
    extra: dict[str, object] = field(default_factory=dict)


@dataclass
class TrainResult:
    adapter_path: Path
    steps: int
    seconds: float
    train_size: int
    tune_size: int
    thresholds: list[float] | None
    config: TrainConfig  # as written: the LoRA shape of the adapter started from, doubled by `keep`


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _length_buckets(lengths: Sequence[int], batch_size: int, generator: random.Random) -> list[list[int]]:
    """Shuffle, then sort within windows of 50 batches so each batch holds texts of similar length."""
    indexes = list(range(len(lengths)))
    generator.shuffle(indexes)
    window = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(indexes), window):
        chunk = sorted(indexes[start : start + window], key=lengths.__getitem__)
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    generator.shuffle(batches)
    return batches


def _targets(examples: Sequence[Example], config: TrainConfig) -> torch.Tensor:
    if config.kind is ModelKind.SINGLE_LABEL:
        return torch.tensor([e.label_ids[0] for e in examples])
    return gold_matrix(examples, len(config.labels)).float()


@torch.no_grad()
def _logits(
    model: MeanPooledClassifier,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    config: TrainConfig,
    device: torch.device,
) -> torch.Tensor:
    model.eval()
    encoded = tokenizer(list(texts), truncation=True, max_length=config.max_length)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    out = torch.empty((len(texts), len(config.labels)))
    for start in range(0, len(order), 128):
        indexes = order[start : start + 128]
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in indexes]}, return_tensors="pt")
        out[indexes] = model(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().cpu()
    model.train()
    return out


def model_train(
    config: TrainConfig,
    train: Sequence[Example],
    dev: Sequence[Example],
    out_dir: Path,
    *,
    progress: Callable[[list[list[int]]], Iterable[list[int]]] = lambda steps: steps,
    log: Callable[[str], None] = print,
    init_from: Path | None = None,
) -> TrainResult:
    """Train, tune thresholds (multi-label) on a held-out slice of train, write the adapter file.
    With `init_from` (an adapter file of the same labels and kind; its LoRA shape is kept), training starts from
    its factors and head: a served version fine-tuned further, e.g. on reviewed predictions."""
    _seed_everything(config.seed)
    device = torch.device(config.device)
    started = time.monotonic()
    generator = random.Random(config.seed)

    if config.distill_rows and init_from is None:
        raise ValueError("distill_rows needs init_from: the adapter whose scores those rows learn")
    train, distilled, tune = _tune_split(list(train), config, generator)

    config, tokenizer, model = _model_build(config, init_from)
    head = model.head
    model = model.to(device)
    model.train()

    encoded = tokenizer([e.text for e in train], truncation=True, max_length=config.max_length)["input_ids"]
    targets = _targets(train, config)
    loss_fn = nn.CrossEntropyLoss() if config.kind is ModelKind.SINGLE_LABEL else nn.BCEWithLogitsLoss()
    teacher: torch.Tensor | None = None  # the starting adapter's logits for each distilled row
    if any(distilled):
        teacher = torch.zeros((len(train), len(config.labels)))
        rows = [i for i, flag in enumerate(distilled) if flag]
        teacher[rows] = _logits(model, tokenizer, [train[i].text for i in rows], config, device)
    distilled_mask = torch.tensor(distilled, dtype=torch.bool)
    adapter_params = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    optimizer = torch.optim.AdamW(
        [
            {"params": adapter_params, "lr": config.learning_rate},
            {"params": list(head.parameters()), "lr": config.head_learning_rate},
        ],
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs

    def schedule(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - config.warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    plan = [
        batch
        for _ in range(config.epochs)
        for batch in _length_buckets([len(x) for x in encoded], config.batch_size, generator)
    ]
    running = 0.0
    bar = progress(plan)
    for step, indexes in enumerate(bar):
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in indexes]}, return_tensors="pt")
        logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        if teacher is None:
            loss = loss_fn(logits, targets[indexes].to(device))
        else:
            loss = _loss_with_distillation(
                logits,
                targets[indexes].to(device),
                teacher[indexes].to(device),
                distilled_mask[indexes].to(device),
                config,
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(adapter_params + list(head.parameters()), 1.0)
        optimizer.step()
        scheduler.step()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if hasattr(bar, "set_postfix") and step % 20 == 0:
            bar.set_postfix(loss=f"{running:.4f}")

    if init_from is not None and config.keep != 1.0:
        adapter_interpolate(model, init_from, keep=config.keep)  # both factor pairs: twice the rank, same scale
        config = replace(config, lora_rank=2 * config.lora_rank, lora_alpha=2 * config.lora_alpha)
    thresholds = None
    dev_logits = _logits(model, tokenizer, [e.text for e in dev], config, device)
    if config.kind is ModelKind.SINGLE_LABEL:
        log(f"dev accuracy (training weights, fp32): {accuracy(dev_logits.argmax(1), _targets(dev, config)):.4f}")
    else:
        gold = gold_matrix(dev, len(config.labels))
        flat = multilabel_scores(torch.sigmoid(dev_logits), gold, torch.full((len(config.labels),), 0.5))
        log(f"dev at threshold 0.5 (training weights): {json.dumps({k: round(v, 4) for k, v in flat.items()})}")
        if tune:
            tune_logits = _logits(model, tokenizer, [e.text for e in tune], config, device)
            tuned = thresholds_tune(torch.sigmoid(tune_logits), gold_matrix(tune, len(config.labels)))
            thresholds = [round(float(t), 2) for t in tuned]

    out_dir.mkdir(parents=True, exist_ok=True)
    adapter_path = out_dir / ADAPTER_FILE
    adapter_write(adapter_path, model, config, thresholds)
    return TrainResult(
        adapter_path=adapter_path,
        steps=len(plan),
        seconds=time.monotonic() - started,
        train_size=len(train),
        tune_size=len(tune),
        thresholds=thresholds,
        config=config,
    )


def _tune_split(
    train: list[Example], config: TrainConfig, generator: random.Random
) -> tuple[list[Example], list[bool], list[Example]]:
    """(rows to train on, whether each is distilled, rows held out to tune thresholds): multi-label
    models hold out a shuffled tune_fraction of the rows; the first distill_rows are the distilled ones."""
    distilled = [i < config.distill_rows for i in range(len(train))]
    if config.kind is not ModelKind.MULTI_LABEL or config.tune_fraction <= 0:
        return train, distilled, []
    order = list(range(len(train)))
    generator.shuffle(order)  # the permutation shuffling the rows themselves would give
    train, distilled = [train[i] for i in order], [distilled[i] for i in order]
    cut = int(len(train) * config.tune_fraction)
    return train[cut:], distilled[cut:], train[:cut]


def _loss_with_distillation(
    logits: torch.Tensor, targets: torch.Tensor, teacher: torch.Tensor, distilled: torch.Tensor, config: TrainConfig
) -> torch.Tensor:
    """The batch's mean loss: each distilled row's distance from the starting adapter's scores, both
    softened at the temperature (scaled by its square, so its gradients keep their size), and each
    other row's usual loss against its labels."""
    temperature = config.distill_temperature
    if config.kind is ModelKind.SINGLE_LABEL:
        hard = nn.functional.cross_entropy(logits, targets, reduction="none")
        soft = nn.functional.kl_div(
            nn.functional.log_softmax(logits / temperature, dim=-1),
            nn.functional.log_softmax(teacher / temperature, dim=-1),
            reduction="none",
            log_target=True,
        ).sum(-1)
    else:
        hard = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(-1)
        soft = nn.functional.binary_cross_entropy_with_logits(
            logits / temperature, torch.sigmoid(teacher / temperature), reduction="none"
        ).mean(-1)
    return torch.where(distilled, soft * temperature**2, hard).mean()


def _model_build(
    config: TrainConfig, init_from: Path | None
) -> tuple[TrainConfig, PreTrainedTokenizerBase, MeanPooledClassifier]:
    """The base encoder with LoRA attached and a head: fresh, or `init_from`'s. An adapter keeps its
    own LoRA shape (one averaged by `keep` has twice the rank), so the config returned has it."""
    if init_from is not None:
        metadata = adapter_metadata(init_from)
        config = replace(config, lora_rank=int(metadata["lora_rank"]), lora_alpha=float(metadata["lora_alpha"]))
    tokenizer, encoder = base_encoder_load()
    lora_attach(encoder, rank=config.lora_rank, alpha=config.lora_alpha, dropout=config.lora_dropout)
    head = nn.Linear(encoder.config.hidden_size, len(config.labels))
    model = MeanPooledClassifier(encoder, head, dropout=config.head_dropout)
    if init_from is not None:
        adapter_init(model, init_from, config)
    return config, tokenizer, model


def adapter_init(model: MeanPooledClassifier, path: Path, config: TrainConfig) -> None:
    """Copy an earlier adapter's LoRA factors and head into a freshly attached model of its shape
    (`_model_build` attaches LoRA of the adapter's rank and alpha)."""
    metadata = adapter_metadata(path)
    mine = (config.labels, config.kind.value, BASE_WEIGHTS_SHA256)
    theirs = (json.loads(metadata["labels"]), metadata["kind"], metadata["base_sha256"])
    if mine != theirs:
        raise ValueError(f"{path}: labels, kind or base encoder differ from this training's: {theirs}")
    _adapter_copy(model, load_file(str(path)))


def adapter_interpolate(model: MeanPooledClassifier, path: Path, *, keep: float) -> None:
    """Move a model fine-tuned from the adapter at `path` back toward it, in weight space (WiSE-FT):
    every adapted weight becomes init + keep × (trained - init), and so does the head. Averaging a
    fine-tuned model's weights with those it started from keeps most of the gain on the new data and
    more of the old. A layer's change is its factors' product, scale × B @ A, so the factors cannot
    be averaged one by one (that is not the average of the products); each layer keeps both pairs
    side by side instead: A = [A_init; A_trained], B = [(1 - keep) B_init, keep B_trained], the same
    scale, twice the rank of `path` (which training took on, `_model_build`)."""
    tensors = load_file(str(path))
    with torch.no_grad():
        for weight, key in [(model.head.weight, "head.weight"), (model.head.bias, "head.bias")]:
            start = tensors[key].float().to(weight.device)
            weight.copy_(start + keep * (weight - start))
        for name, module in model.encoder.named_modules():
            if isinstance(module, LoRALinear):
                a, b = module.lora_A, module.lora_B
                a_init = tensors[f"encoder.{name}.lora_A"].float().to(a.device)
                b_init = tensors[f"encoder.{name}.lora_B"].float().to(b.device)
                module.lora_A = nn.Parameter(torch.cat([a_init, a.detach()]), requires_grad=a.requires_grad)
                module.lora_B = nn.Parameter(
                    torch.cat([(1 - keep) * b_init, keep * b.detach()], dim=1), requires_grad=b.requires_grad
                )


def _adapter_copy(model: MeanPooledClassifier, tensors: dict[str, torch.Tensor]) -> None:
    """Each LoRA factor and head weight set to the adapter's."""
    pairs = [(model.head.weight, "head.weight"), (model.head.bias, "head.bias")]
    for name, module in model.encoder.named_modules():
        if isinstance(module, LoRALinear):
            pairs += [(module.lora_A, f"encoder.{name}.lora_A"), (module.lora_B, f"encoder.{name}.lora_B")]
    with torch.no_grad():
        for weight, key in pairs:
            weight.copy_(tensors[key].float().to(weight.device))


def adapter_write(path: Path, model: MeanPooledClassifier, config: TrainConfig, thresholds: list[float] | None) -> None:
    """LoRA factors and head in fp16; everything needed to rebuild the model in the metadata."""
    tensors = {f"encoder.{key}": value.half().contiguous() for key, value in lora_state_dict(model.encoder).items()}
    tensors["head.weight"] = model.head.weight.detach().cpu().half().contiguous()
    tensors["head.bias"] = model.head.bias.detach().cpu().half().contiguous()
    if thresholds is not None:
        tensors["thresholds"] = torch.tensor(thresholds, dtype=torch.float32)
    hyper = {k: v for k, v in asdict(config).items() if k not in ("labels", "kind", "name", "extra")}
    metadata = {
        "format": ADAPTER_FORMAT,
        "name": config.name,
        "kind": config.kind.value,
        "labels": json.dumps(config.labels),
        "base_package": f"{BASE_PACKAGE}=={BASE_PACKAGE_VERSION}",
        "base_sha256": BASE_WEIGHTS_SHA256,
        "lora_rank": str(config.lora_rank),
        "lora_alpha": str(config.lora_alpha),
        "max_length": str(config.serve_max_length),
        "hyperparameters": json.dumps(hyper, sort_keys=True),
    }
    save_file(tensors, str(path), metadata=metadata)
    path.chmod(0o644)  # readable by the service's (non-root) user
