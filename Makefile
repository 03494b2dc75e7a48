# Two commands for a new user: `make run` and `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# The real services `make test` uses (its own Redis db and queue, apart from `make run`'s) where behaviour depends on them (override from the environment).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
TEST_BROKER_URL ?= amqp://guest:guest@127.0.0.1:5672//
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: install run test test-ml test-app lint format migrate clean screenshots bench bench-queue review-loop profile weigh audit soak fuzz

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt  # the dev file starts with -r requirements.txt: both are installed
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

migrate: install
	$(PY) manage.py migrate --noinput

run: migrate  ## BIND=HOST:PORT serves elsewhere than 127.0.0.1:8000
	$(PY) manage.py bootstrap_demo $(if $(BIND),--base-url http://$(BIND))
	$(PY) manage.py runstack $(if $(BIND),--bind $(BIND))

test: test-ml test-app  ## textclf's tests without Django, then the app's

test-ml: install  ## textclf's tests alone, with the Django plugin off: they pass only if textclf needs no Django
	$(PY) -m pytest -p no:django textclf/tests $(ML_PYTEST_ARGS)

test-app: install  ## the app's tests on the real services; PYTEST_ARGS="tests/test_commands.py -x" in place of tests/
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} \
	CELERY_BROKER_URL=$${CELERY_BROKER_URL:-$(TEST_BROKER_URL)} \
	REDIS_URL=$${REDIS_URL:-redis://127.0.0.1:6379/13} \
	CELERY_QUEUE=$${CELERY_QUEUE:-mlsite-test} \
	$(PY) -m pytest $(or $(PYTEST_ARGS),tests)

bench: install  ## the service under load against the raw model; BENCH_ARGS="--seconds 10 --clients 1,16 --int8"
	$(PY) bench/run.py $(BENCH_ARGS)

soak: install  ## the real stack under mixed load while the worker child is killed; SOAK_ARGS="--minutes 2"
	$(PY) bench/soak.py $(SOAK_ARGS)

audit: install  ## pip-audit on requirements.txt (the image), then requirements-dev.txt; a known vulnerability fails it (AUDIT_ARGS="--strict": so does an unaudited package)
	$(PY) .ci/audit.py $(AUDIT_ARGS)

fuzz: install  ## schemathesis against the running stack's OpenAPI schema; FUZZ_ARGS="--max-examples 2000 --seed 1 --embedded"
	$(PY) bench/fuzz.py $(FUZZ_ARGS)

profile: install  ## what the model costs by thread count and arrival order, one cache-hit POST in process, round trips after a pause
	$(PY) bench/profiling.py $(PROFILE_ARGS)

review-loop: install  ## the review desk's loop on GoEmotions mapped to sentiment: traffic, reviews in the queue's order and at random, two candidates fine-tuned on them, compared, shadowed, promoted (docs/models.md); LOOP_ARGS="--traffic 300 --reviews 60"
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-redis://127.0.0.1:6379/13} \
	CELERY_BROKER_URL=$${CELERY_BROKER_URL:-$(TEST_BROKER_URL)} CELERY_QUEUE=$${CELERY_QUEUE:-mlsite-review-loop} \
	$(PY) bench/review_loop.py $(LOOP_ARGS)

bench-queue: install  ## the database queue's ceiling (claim → write, no model) and RabbitMQ's (publish → consume) against K processes; QUEUE_ARGS="--claimers 1,4 --seconds 5"
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-redis://127.0.0.1:6379/13} \
	CELERY_BROKER_URL=$${CELERY_BROKER_URL:-$(TEST_BROKER_URL)} CELERY_QUEUE=$${CELERY_QUEUE:-mlsite-bench-queue} \
	$(PY) bench/queue_ceiling.py $(QUEUE_ARGS)

weigh: install  ## what each framework bypass (mlsite/fastpaths.py) saves on its path, alternating on and off; WEIGH_ARGS="--rounds 7"
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-redis://127.0.0.1:6379/13} \
	CELERY_BROKER_URL=$${CELERY_BROKER_URL:-$(TEST_BROKER_URL)} CELERY_QUEUE=$${CELERY_QUEUE:-mlsite-weigh} \
	$(PY) bench/weigh.py $(WEIGH_ARGS)

screenshots: install  ## the admin screenshots in docs/, taken by the browser tests
	SCREENSHOTS_DIR=docs $(MAKE) test-app PYTEST_ARGS="tests/test_admin_browser.py"

lint: install  ## ruff; the import contracts in pyproject.toml (textclf imports no Django, serving no training); mypy (pyproject.toml: the app, textclf strict)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf var .pytest_cache .ruff_cache .mypy_cache .import_linter_cache
