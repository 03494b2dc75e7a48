"""Loaded into the fault tests' Celery worker with `--include tests.fault_plugin`; the service never imports it.

It wraps every served model's run over the texts a worker gives it together (TextClassifier.passes:
one or more forward passes; called "a pass" below) so a test can see and steer it from outside the
worker, through files named in the worker's environment:

- FAULT_PASSES_FILE: each pass appends a JSON line {"pid", "event": "start" | "end", "texts"};
- FAULT_HOLD_FILE: while this file exists, a pass that has started waits before it computes, so a
  test can kill a worker, the broker or the database in the middle of a batch;
- FAULT_POISON: a pass whose texts include one containing this string raises, as a model that
  breaks on one input would.
"""

from __future__ import annotations

import json
import os
import time

from celery.signals import worker_process_init


def _record(event: str, texts: list[str]) -> None:
    path = os.environ.get("FAULT_PASSES_FILE")
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps({"pid": os.getpid(), "event": event, "texts": texts}) + "\n")


@worker_process_init.connect
def _forward_pass_wrap(**_) -> None:
    """Patched in each pool process, where the forward passes run."""
    from textclf.serving.classifier import TextClassifier  # noqa: PLC0415 (torch loads lazily, not when Celery imports this plugin)

    if getattr(TextClassifier.passes, "fault_wrapped", False):
        return
    real_passes = TextClassifier.passes

    def passes(self, texts, **kwargs):
        texts = list(texts)
        _record("start", texts)
        hold = os.environ.get("FAULT_HOLD_FILE")
        while hold and os.path.exists(hold):
            time.sleep(0.02)
        poison = os.environ.get("FAULT_POISON")
        if poison and any(poison in text for text in texts):
            raise RuntimeError("the model broke on this input")
        yield from real_passes(self, texts, **kwargs)
        _record("end", texts)

    passes.fault_wrapped = True
    TextClassifier.passes = passes
