"""`make review-loop`: the review desk's loop on real data, through the service's own code.

The sentiment model was trained on movie reviews (SST-2). Reddit comments (GoEmotions) play the
production traffic that drifted, mapped to positive / negative through the dataset's published
sentiment grouping (a text with emotions of both groups, or of neither, is left out):

1. traffic: `--traffic` texts drawn from GoEmotions train are submitted as API batches and answered
   by the bundled model through the worker's code (a throwaway database on the real PostgreSQL,
   Redis; tasks run in this process), each drawn into the audit sample at REVIEW_SAMPLE_RATE;
2. reviews: a reviewer (the mapped gold label) reviews at most `--reviews` predictions, chosen as the
   review desk offers them: the audit sample, then the review queue's order (most uncertain
   first); `export_reviews` writes them;
3. the same number of random predictions is reviewed instead, and exported, as the baseline;
4. `train_model --init-from bundled:sentiment --extra-data … --replay-min-words 12 --distill-replay`
   fine-tunes the served version on each export, with `--replay` SST-2 training sentences (rows of 12
   words or more) beside it that learn its own scores, and registers each as a candidate;
5. the queue-trained candidate is compared on the reviewed predictions, shadowed on `--shadow-traffic`
   more live texts, and promoted;
6. the served model and both candidates are scored on the mapped GoEmotions **dev** texts (never
   reviewed) and on SST-2 dev; each change is printed with its 95 % interval (`paired_change`).

`--seed` draws the traffic, the audit sample, the random reviews and the training: a run repeats
with the same seed. It prints one table and writes `bench/results/review-loop-<date>.json`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import math
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.profiling import demo_database  # noqa: E402

POSITIVE = {
    "admiration", "amusement", "approval", "caring", "desire", "excitement",
    "gratitude", "joy", "love", "optimism", "pride", "relief",
}  # fmt: skip
NEGATIVE = {
    "anger", "annoyance", "disappointment", "disapproval", "disgust", "embarrassment",
    "fear", "grief", "nervousness", "remorse", "sadness",
}  # fmt: skip


def goemotions_sentiment(path: Path, labels: list[str]) -> list[tuple[str, str]]:
    """(text, positive | negative) for each GoEmotions row whose emotions fall in one group only."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text, ids, _ = line.split("\t")
        names = {labels[int(i)] for i in ids.split(",")}
        positive, negative = bool(names & POSITIVE), bool(names & NEGATIVE)
        if positive != negative:
            rows.append((text, "positive" if positive else "negative"))
    return rows


def answers_right(source: str, rows: list[tuple[str, str]]) -> list[bool]:
    """Whether the model at `source` answers each (text, gold) row right."""
    from predictions.registry import BUNDLED_MODELS_DIR  # noqa: PLC0415
    from textclf.serving.loading import classifier_load  # noqa: PLC0415 (after django.setup())

    classifier = classifier_load("sentiment", source, bundled_dir=BUNDLED_MODELS_DIR, device="cpu")
    answers = classifier.predict([text for text, _ in rows])
    return [a.label == gold for a, (_, gold) in zip(answers, rows, strict=True)]


def scores_of(right: list[bool], rows: list[tuple[str, str]]) -> dict[str, float]:
    """Accuracy, and the share of each gold label answered right (its recall)."""
    scores = {"accuracy": sum(right) / len(rows)}
    for label in sorted({gold for _, gold in rows}):
        of_label = [ok for ok, (_, gold) in zip(right, rows, strict=True) if gold == label]
        scores[f"recall_{label}"] = sum(of_label) / len(of_label)
    return scores


def paired_change(before: list[bool], after: list[bool]) -> dict[str, float]:
    """The change in accuracy from `before` to `after` on the same texts, in points, with its 95 %
    interval from the texts whose answer changed (the paired difference's normal approximation):
    on SST-2 dev's 872 texts, a point is 8.7 texts."""
    n = len(before)
    gained = sum(not b and a for b, a in zip(before, after, strict=True))
    lost = sum(b and not a for b, a in zip(before, after, strict=True))
    change = (gained - lost) / n
    spread = 1.96 * math.sqrt(max(gained + lost - n * change**2, 0.0)) / n
    return {
        "gained": gained,
        "lost": lost,
        "points": round(100 * change, 2),
        "low": round(100 * (change - spread), 2),
        "high": round(100 * (change + spread), 2),
    }


def submit(user, texts: list[str]) -> list[int]:
    """The texts as API batches of 1,000, answered by the worker's code in this process."""
    from predictions.services.submission import batch_create  # noqa: PLC0415

    ids = []
    for start in range(0, len(texts), 1000):
        batch = batch_create(owner=user, texts=texts[start : start + 1000], model_name="sentiment")
        ids += list(batch.predictions.order_by("position").values_list("pk", flat=True))
    return ids


def review(reviewer, ids: list[int], gold: dict[int, str]) -> dict[str, int]:
    """The reviewer's decisions through the desk's own service: confirm, or correct to the gold label."""
    from predictions.models import Prediction  # noqa: PLC0415
    from predictions.services.review import prediction_review  # noqa: PLC0415

    counts = {"reviewed": 0, "corrected": 0}
    for row in Prediction.objects.filter(pk__in=ids).only("pk", "label"):
        corrected = gold[row.pk] if gold[row.pk] != row.label else ""
        prediction_review(prediction=row, reviewer=reviewer, corrected_label=corrected, note="review-loop")
        counts["reviewed"] += 1
        counts["corrected"] += bool(corrected)
    return counts


def reviews_clear() -> None:
    from predictions.models import Prediction, PredictionReview  # noqa: PLC0415

    PredictionReview.objects.all().delete()
    Prediction.objects.update(corrected_label="", review_note="", reviewed_by=None, reviewed_at=None)


def command(*args: str) -> str:
    from django.core.management import call_command  # noqa: PLC0415

    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traffic", type=int, default=6000, help="GoEmotions train texts sent as traffic")
    parser.add_argument("--reviews", type=int, default=1000, help="predictions reviewed (sample + queue order)")
    parser.add_argument("--replay", type=int, default=12000, help="SST-2 training rows replayed beside the reviews")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr-scale", type=float, default=1.0, help="train_model --lr-scale for both candidates")
    parser.add_argument("--keep", type=float, default=1.0, help="train_model --keep for both candidates")
    parser.add_argument("--balance-extra", action="store_true", help="train_model --balance-extra for both candidates")
    parser.add_argument(
        "--replay-uncertain",
        action="store_true",
        help="train_model --replay-uncertain for both candidates: the --replay SST-2 rows the served version is least sure of",
    )
    parser.add_argument(
        "--replay-min-words",
        type=int,
        default=12,
        help="train_model --replay-min-words for both candidates: replay SST-2 rows of at least this many words "
        "(whole sentences, as dev and traffic are); 0: the first --replay rows, mostly phrases",
    )
    parser.add_argument(
        "--distill-replay",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train_model --distill-replay for both candidates (the default): the replayed SST-2 rows learn the "
        "served version's scores; --no-distill-replay: their labels",
    )
    parser.add_argument(
        "--shadow-traffic", type=int, default=500, help="live texts sent while the candidate is shadowed"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="draws the traffic, the audit sample, the random reviews and the training"
    )
    parser.add_argument(
        "--datasets-dir", type=Path, default=Path(os.environ.get("DATASETS_DIR", ROOT.parent / "shared" / "datasets"))
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    os.environ.setdefault("REVIEW_SAMPLE_RATE", "0.01")
    os.environ.update(SHADOW_RATE="1", MODEL_VERSION_CHECK_SECONDS="0", MLSITE_MODELS="sentiment=bundled:sentiment")
    labels = (args.datasets_dir / "goemotions" / "labels.txt").read_text().split()
    generator = random.Random(args.seed)
    random.seed(args.seed)  # the audit sample, drawn at submission (services.submission): the same on every run
    traffic_pool = goemotions_sentiment(args.datasets_dir / "goemotions" / "train.tsv", labels)
    reddit_dev = goemotions_sentiment(args.datasets_dir / "goemotions" / "dev.tsv", labels)
    sst2_dev = [
        (sentence, "positive" if label == "1" else "negative")
        for label, sentence in (
            line.split("\t") for line in (args.datasets_dir / "sst2" / "dev.tsv").read_text().splitlines()[1:]
        )
    ]
    generator.shuffle(traffic_pool)
    traffic, later = traffic_pool[: args.traffic], traffic_pool[args.traffic : args.traffic + args.shadow_traffic]
    report: dict = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "mapped": {"train": len(traffic_pool), "reddit_dev": len(reddit_dev)},
    }
    started = time.monotonic()

    with demo_database() as (user, _), tempfile.TemporaryDirectory(prefix="review-loop-") as tmp:
        from django.contrib.auth import get_user_model  # noqa: PLC0415
        from django.core.cache import cache  # noqa: PLC0415

        from mlsite.celery import app  # noqa: PLC0415
        from predictions.models import ModelVersion, Prediction  # noqa: PLC0415
        from predictions.selectors import review_queue, reviewed_agreement, shadow_agreement  # noqa: PLC0415
        from predictions.services.shadow import shadow_compare_on_reviews, shadow_run, shadow_start  # noqa: PLC0415
        from predictions.services.versions import model_version_promote  # noqa: PLC0415

        app.conf.task_always_eager = True
        cache.clear()  # every text answered now, by a worker: none from an earlier run's cache
        reviewer = get_user_model().objects.create_user("reviewer-loop", is_staff=True)
        ids = submit(user, [text for text, _ in traffic])
        gold = {pk: label for pk, (_, label) in zip(ids, traffic, strict=True)}
        answered = dict(Prediction.objects.filter(pk__in=ids).values_list("pk", "label"))
        report["traffic"] = {
            "texts": len(ids),
            "served_accuracy": sum(answered[pk] == gold[pk] for pk in ids) / len(ids),
        }

        sample = list(review_queue(model_name="sentiment", sample=True).values_list("pk", flat=True)[: args.reviews])
        queue = [
            pk
            for pk in review_queue(model_name="sentiment").values_list("pk", flat=True)[: args.reviews]
            if pk not in set(sample)
        ]
        chosen = sample + queue[: args.reviews - len(sample)]
        strategies = {"queue": chosen, "random": generator.sample(ids, len(chosen))}
        exports = {}
        for name, picked in strategies.items():
            reviews_clear()
            report[f"reviews_{name}"] = review(reviewer, picked, gold)
            exports[name] = Path(tmp) / f"reviews-{name}.tsv"
            report[f"export_{name}"] = json.loads(command("export_reviews", "sentiment", "--out", str(exports[name])))
            labels_written = [line.split("\t")[0] for line in exports[name].read_text().splitlines()[1:]]
            report[f"export_{name}"]["positive"] = labels_written.count("1")
        reviews_clear()
        review(reviewer, strategies["queue"], gold)  # the desk as it stands: the queue's reviews

        candidates = {}
        for name, path in exports.items():
            out_dir = Path(tmp) / f"candidate-{name}"
            output = command(
                "train_model", "sentiment", "--init-from", "bundled:sentiment", "--extra-data", str(path),
                "--limit", str(args.replay), "--epochs", str(args.epochs), "--seed", str(args.seed),
                "--lr-scale", str(args.lr_scale), "--keep", str(args.keep),
                "--out", str(out_dir), "--datasets-dir", str(args.datasets_dir),
                *(["--balance-extra"] if args.balance_extra else []),
                *(["--replay-uncertain"] if args.replay_uncertain else []),
                *(["--replay-min-words", str(args.replay_min_words)] if args.replay_min_words else []),
                *(["--distill-replay"] if args.distill_replay else []),
            )  # fmt: skip
            trained = json.loads(output.strip().splitlines()[-1])
            candidates[name] = ModelVersion.objects.get(pk=trained["candidate"]["id"])
            report[f"candidate_{name}"] = {"version": candidates[name].version, "source": candidates[name].source}
        sources = [("served", "bundled:sentiment")] + [(n, v.source) for n, v in candidates.items()]
        data = {"reddit_dev": reddit_dev, "sst2_dev": sst2_dev}
        right = {name: {key: answers_right(source, rows) for key, rows in data.items()} for name, source in sources}
        report["scores"] = {name: {key: scores_of(right[name][key], data[key]) for key in data} for name, _ in sources}
        report["changes"] = {
            f"{after} from {before}": {key: paired_change(right[before][key], right[after][key]) for key in data}
            for before, after in [("served", "queue"), ("served", "random"), ("random", "queue")]
        }
        report["accuracy"] = {
            name: {data: figures["accuracy"] for data, figures in by_data.items()}
            for name, by_data in report["scores"].items()
        }

        candidate = candidates["queue"]
        shadow_compare_on_reviews(candidate)
        shadow_run(["sentiment"], deadline=time.monotonic() + 600)
        shadow_start(candidate)
        submit(user, [text for text, _ in later])  # their shadow answers are queued, given below
        shadow_run(["sentiment"], deadline=time.monotonic() + 600)
        report["compared_on_reviews"] = {k: v for k, v in reviewed_agreement(candidate).items() if k != "disagreements"}
        report["shadow"] = {k: v for k, v in shadow_agreement(candidate).items() if k != "disagreements"}
        model_version_promote(candidate, user=reviewer)
        candidate.refresh_from_db()
        report["promoted"] = {"version": candidate.version, "state": candidate.state}
    report["seconds"] = round(time.monotonic() - started)

    acc = report["accuracy"]

    def interval(change: dict[str, float]) -> str:
        return (
            f"{change['points']:+.2f} [{change['low']:+.2f}, {change['high']:+.2f}] "
            f"({change['gained']}, {change['lost']})"
        )

    lines = [
        f"traffic: {report['traffic']['texts']} GoEmotions train texts mapped to sentiment; the served model got "
        f"{report['traffic']['served_accuracy']:.1%} right",
        f"reviews: {report['reviews_queue']['reviewed']} by the desk's order (audit sample {len(sample)}, then the queue): "
        f"{report['reviews_queue']['corrected']} corrections; {report['reviews_random']['reviewed']} random: "
        f"{report['reviews_random']['corrected']} corrections",
        "",
        f"| model | GoEmotions dev, mapped (n = {len(reddit_dev)}) | SST-2 dev (n = {len(sst2_dev)}) "
        "| SST-2 dev negatives, positives right |",
        "|---|---|---|---|",
        *(
            f"| {name} | {acc[key]['reddit_dev']:.4f} | {acc[key]['sst2_dev']:.4f} "
            f"| {report['scores'][key]['sst2_dev']['recall_negative']:.4f}, "
            f"{report['scores'][key]['sst2_dev']['recall_positive']:.4f} |"
            for name, key in (
                ("served (bundled sentiment)", "served"),
                ("candidate, reviews in the queue's order", "queue"),
                ("candidate, random reviews", "random"),
            )
        ),
        "",
        "changes in points, with their 95 % intervals from the texts whose answers changed (gained, lost):",
        *(
            f"- {pair}: GoEmotions dev {interval(c['reddit_dev'])}; SST-2 dev {interval(c['sst2_dev'])}"
            for pair, c in report["changes"].items()
        ),
        "",
        f"candidate on the reviewed predictions: {report['compared_on_reviews']}",
        f"candidate shadowed on {len(later)} live texts: {report['shadow']}",
        f"promoted: {report['promoted']}; {report['seconds']} s in all",
    ]
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"review-loop-{dt.datetime.now(dt.UTC).strftime('%Y-%m-%dT%H%M%SZ')}.json"
    text = json.dumps({**report, "table": table}, indent=2)
    text = re.sub(r"/[^\"]*/review-loop-[A-Za-z0-9_]+", "<tmp>", text).replace(str(ROOT.parent) + "/", "../")
    text = re.sub(r'"out": "[^"]*"', '"out": "<out>"', text)
    path.write_text(text)  # no path of the machine it ran on
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
