"""`make profile`: the measurements behind the throughput settings (docs/performance.md, Where the time goes).

1. The model alone, in this process, on the SST-2 dev sentences: torch threads × how texts reach
   it (sorted over the whole set, as RAW; in arrival order, a few at a time, as a service sees
   them). Shows what padding and thread count cost. Then one text at a time, back to back and
   after a pause, as a lone request's worker runs it.
2. One cache-hit POST through Django in this process (no HTTP server), on the database and cache
   the environment names: CPU and wall time per request, and a cProfile of the top functions.
3. One round trip to PostgreSQL and to Redis, back to back and after a 25 ms pause (about one
   forward pass): what each hop between processes costs when the machine was idle in between,
   as it is between the steps of a lone request.

Run it on a quiet machine; it prints ratios and per-text CPU, no pass/fail.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import django
import psycopg
import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import close_old_connections
from django.test import Client
from django.test.utils import get_runner, setup_test_environment

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import sst2_texts, unique_texts  # noqa: E402
from predictions.registry import BUNDLED_MODELS_DIR  # noqa: E402
from textclf.serving.loading import classifier_load  # noqa: E402


def model_grid(datasets_dir: Path) -> None:
    import torch  # noqa: PLC0415 (torch loads lazily: only the model measurements need it)

    texts = unique_texts(sst2_texts(datasets_dir), 872, "p")
    classifiers = {
        packed: classifier_load(
            "sentiment", "bundled:sentiment", bundled_dir=BUNDLED_MODELS_DIR, device="cpu", int8=False, packed=packed
        )
        for packed in (False, True)
    }
    for classifier in classifiers.values():
        classifier.predict(texts[:64])
    cores = os.cpu_count() or 1
    cases = [  # (threads, texts per call, batch size): one call sees `chunk` texts, sorts them, runs batches
        (cores, len(texts), 16),
        (1, len(texts), 16),
        (cores, 100, 16),
        (cores, 16, 16),
        (1, 8, 8),
        (1, 4, 4),
        (1, 1, 1),
    ]
    print("model alone: threads, texts per call (arrival order), batch size, padded or packed (INFERENCE_PACKED)")
    print("  → texts/s, CPU ms per text")
    reference = None
    for threads, chunk, batch in cases:
        torch.set_num_threads(threads)
        for packed, classifier in classifiers.items():
            began, cpu = time.perf_counter(), time.process_time()
            for start in range(0, len(texts), chunk):
                classifier.predict(texts[start : start + chunk], batch_size=batch)
            wall, cpu = time.perf_counter() - began, time.process_time() - cpu
            rate = len(texts) / wall
            reference = reference or rate
            label = "all (sorted, = RAW)" if chunk == len(texts) else str(chunk)
            print(
                f"  threads {threads}  per call {label:>20}  batch {batch:>2}  {'packed' if packed else 'padded'}  "
                f"{rate:7.1f} texts/s ({rate / reference:.2f} × padded RAW)  {1000 * cpu / len(texts):5.1f} ms CPU/text"
            )
    lone_after_pause(classifiers[True], texts[:200])


def lone_after_pause(classifier, texts: list[str], pause: float = 0.025) -> None:
    """One text at a time on one thread, back to back and each after `pause` seconds (about what a
    lone request's worker waits between its passes): the median forward pass."""
    import torch  # noqa: PLC0415 (torch loads lazily: only the model measurements need it)

    torch.set_num_threads(1)
    calls = [lambda text=text: classifier.predict([text]) for text in texts]
    print(
        f"one text, packed, 1 thread, median of {len(texts)}: back to back {1000 * median_seconds(calls, 0):.1f} ms, "
        f"each after a {pause * 1000:.0f} ms pause {1000 * median_seconds(calls, pause):.1f} ms"
    )


def median_seconds(calls, wait: float) -> float:
    """The median time of each call, each made after sleeping `wait` seconds (none when 0)."""
    times = []
    for call in calls:
        if wait:
            time.sleep(wait)
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


@contextlib.contextmanager
def demo_database() -> Iterator[tuple[object, str]]:
    """Django set up in this process on a throwaway test database (never the configured one) holding the
    demo user: yields (user, token). Uses the database and cache the environment names."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mlsite.settings")
    os.environ.setdefault("ALLOWED_HOSTS", "testserver")
    os.environ.setdefault("LOG_LEVEL", "WARNING")  # no access line per request on the terminal
    os.environ.update(THROTTLE_SUBMIT="", THROTTLE_READ="")  # one user sends every request here
    django.setup()
    from rest_framework.authtoken.models import Token  # noqa: PLC0415 (models: only after django.setup() above)

    setup_test_environment()
    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("postgresql"):  # its own throwaway database, apart from the test suite's
        database.setdefault("TEST", {})["NAME"] = "test_mlsite_profile"
    runner = get_runner(settings)(verbosity=0, interactive=False)
    old = runner.setup_databases()
    try:
        call_command("bootstrap_demo", stdout=io.StringIO())
        user = get_user_model().objects.get(username="admin")
        yield user, Token.objects.get_or_create(user=user)[0].key
    finally:
        runner.teardown_databases(old)


def cache_hit_post(user, token: str, *, url: str = "/api/v1/predictions/") -> Callable[[], None]:
    """A function sending one POST of a text the cache already holds, through Django (no HTTP server)."""
    from predictions.services import submission, worker  # noqa: PLC0415 (models: only after django.setup())

    text = f"a text for the request profile {os.getpid()}"
    row = submission.prediction_create(owner=user, text=text, model_name=settings.DEFAULT_MODEL)
    worker.predictions_run([row.pk], others=False)  # fills the cache
    client = Client(HTTP_AUTHORIZATION=f"Token {token}")
    body = f'{{"text": "{text}"}}'

    def post() -> None:
        close_old_connections()  # what request_started does under a web server; Django's test Client skips it
        response = client.post(url, data=body, content_type="application/json")
        assert response.status_code == 200, response.content
        assert response.json()["cached"], response.content

    return post


def request_cost(requests: int) -> None:
    with demo_database() as (user, token):
        post = cache_hit_post(user, token)
        for _ in range(30):
            post()
        began, cpu = time.perf_counter(), time.process_time()
        for _ in range(requests):
            post()
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu
        print(
            f"cache-hit POST in process: {1000 * wall / requests:.2f} ms wall, {1000 * cpu / requests:.2f} ms CPU each"
        )
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(requests):
            post()
        profile.disable()
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(12)
        print(out.getvalue())


def round_trips(pause: float = 0.025, repeats: int = 200) -> None:
    """Median round trip of `SELECT 1` and Redis PING, back to back and each after `pause` seconds."""
    database_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if not database_url.startswith("postgres"):
        print("round trips: DATABASE_URL is not PostgreSQL; skipped")
        return
    with psycopg.connect(database_url, autocommit=True) as conn:
        client = redis.Redis.from_url(redis_url)
        calls = {"PostgreSQL SELECT 1": lambda: conn.execute("SELECT 1").fetchone(), "Redis PING": client.ping}

        def median_us(call, wait: float) -> float:
            return median_seconds([call] * repeats, wait) * 1e6

        for call in calls.values():  # connect and warm up
            median_us(call, 0)
        print(f"round trips, median of {repeats}:")
        for name, call in calls.items():
            print(
                f"  {name:<20} back to back {median_us(call, 0):5.0f} µs   "
                f"after a {pause * 1000:.0f} ms pause {median_us(call, pause):5.0f} µs"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--skip-request", action="store_true")
    parser.add_argument("--skip-round-trips", action="store_true")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument(
        "--datasets-dir", type=Path, default=Path(os.environ.get("DATASETS_DIR", ROOT.parent / "shared" / "datasets"))
    )
    args = parser.parse_args()
    if not args.skip_model:
        model_grid(args.datasets_dir)
    if not args.skip_request:
        request_cost(args.requests)
    if not args.skip_round_trips:
        round_trips()


if __name__ == "__main__":
    main()
