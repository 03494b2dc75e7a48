"""What the bench's workloads send, when they measure and how they count the CPU (bench/run.py,
bench/cpu.py): every workload's texts as long as any other's, W4's window opening once its backlog
is queued, and the CPU of a process that ended during a window still counted."""

import subprocess
import sys
import time

import pytest

from bench import run
from bench.cpu import CpuMeter
from predictions.registry import BUNDLED_MODELS_DIR
from textclf.serving.loading import classifier_load

SENTENCES = [
    "a gorgeous , witty , seductive movie .",
    "the acting , costumes , music , cinematography and sound are all astounding given the production 's "
    "austere locales .",
    "it 's slow -- very , very slow .",
]


def test_every_workload_s_texts_carry_the_same_number_of_tokens_and_none_repeats():
    """Each text is made unique with a mark of its own; the mark costs the model the same tokens whatever
    the workload's tag, so workloads (and RAW) compare like with like."""
    tokenizer = classifier_load(
        "sentiment", "bundled:sentiment", bundled_dir=BUNDLED_MODELS_DIR, device="cpu"
    ).tokenizer
    plain = [len(tokenizer(text)["input_ids"]) for text in SENTENCES]
    seen: set[str] = set()
    for tag, n in (("r", 30), ("w2-", 30), ("w4i-reprocess-", 30), ("w1c16-", 30)):
        texts = run.unique_texts(SENTENCES, n, tag)
        assert len(texts) == n
        added = {len(tokenizer(text)["input_ids"]) - plain[i % len(plain)] for i, text in enumerate(texts)}
        assert added == {run.MARK_LETTERS + 2}, tag  # the letters and the two brackets
        assert all(text.startswith(SENTENCES[i % len(SENTENCES)] + " (") for i, text in enumerate(texts))
        assert not seen & set(texts), tag
        seen |= set(texts)
    assert run.unique_texts(SENTENCES, 5, "w2-") == run.unique_texts(SENTENCES, 5, "w2-")  # a tag's texts are its own


def test_unique_texts_refuses_more_texts_than_its_marks_can_tell_apart():
    with pytest.raises(ValueError, match="1,000,000 texts"):
        run.unique_texts(SENTENCES, 1_000_001, "w2-")


@pytest.mark.parametrize("submit_inside", [False, True])
def test_w4_s_window_opens_once_the_backlog_is_queued_or_a_second_into_its_submission(monkeypatch, submit_inside):
    moments: dict[str, float] = {}

    def during():
        moments["submitting"] = time.monotonic()
        time.sleep(1.6)
        moments["submitted"] = time.monotonic()

    def closed_loop(stack, **kwargs):
        moments["window"] = time.monotonic()
        return {"requests": 0}

    monkeypatch.setattr(run, "closed_loop", closed_loop)
    monkeypatch.setattr(run, "rows_finished", lambda stack, since, until: 20)
    monkeypatch.setattr(run, "rows_unfinished", lambda stack: 0)
    row = run.mixed(None, clients=1, seconds=1, texts=["a"], during=during, submit_inside=submit_inside)
    if submit_inside:
        assert moments["submitting"] + 0.9 < moments["window"] < moments["submitted"]
    else:
        assert moments["window"] >= moments["submitted"]
    assert row["submit_inside"] is submit_inside
    assert row["submit_seconds"] == pytest.approx(1.6, abs=0.3)
    since, until = row["window"]
    assert since <= until
    assert row["bulk_per_second"] > 0


def test_the_cpu_meter_counts_a_process_that_ended_in_the_window_as_other():
    """A management command (and its database connection) that ends inside a workload's window is
    gone when the meter reads the processes: its CPU is the machine's busy time that no living
    process used."""
    meter = CpuMeter().start()
    spin = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end:\n    pass"
    subprocess.run([sys.executable, "-c", spin], check=True)
    seconds = meter.stop()
    assert seconds["other"] >= 0.45
    assert seconds["loadgen"] < 0.45  # a child's CPU is not its parent's
