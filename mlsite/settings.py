"""mlsite settings: every value comes from the environment, with defaults that run on a laptop.

With nothing set, the project uses its embedded default: SQLite, kombu's filesystem broker and
a file-based cache, all under var/. Set DATABASE_URL, CELERY_BROKER_URL and REDIS_URL to run on
PostgreSQL, RabbitMQ and Redis. docs/configuration.md lists every variable with its default.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url

from mlsite.env import env_bool, env_choice, env_fraction, env_int, env_list, env_models, env_rate, env_str, env_subset
from mlsite.fastpaths import BYPASSES
from mlsite.logs import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("MLSITE_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = env_str("SECRET_KEY", "dev-only-insecure-key-change-me")
DEBUG = env_bool("DEBUG", True)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])

# Behind a TLS-terminating proxy set these (all off by default so plain http on localhost works);
# `DEBUG=0 … python manage.py check --deploy --fail-level WARNING` passes with them on.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("SECURE_PROXY_SSL_HEADER", False) else None
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files, served from here rather than a CDN
    "django_celery_results",
    "axes",  # failed logins limited per account and per address, and recorded (docs/operations.md, Login limits)
    "predictions",
]

MIDDLEWARE = [
    "mlsite.middleware.RequestContextMiddleware",  # first: the request id and access line cover every answer
    "predictions.middleware.RequestSizeLimitMiddleware",
    "predictions.api.errors.ApiExceptionMiddleware",  # a view's exception under /api/ answered as JSON
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes requires: turns a lockout into its page
]

ROOT_URLCONF = "mlsite.urls"
WSGI_APPLICATION = "mlsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60))}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Web and worker processes write the same file: WAL plus IMMEDIATE transactions avoid "database is locked".
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # The same backend, with a health check that needs no round trip while the connection is quiet.
    DATABASES["default"]["ENGINE"] = "mlsite.postgresql"
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
else:  # a persistent connection the server closed (a restart) is replaced before a request's first query
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# DATABASE_URL names a pooler in transaction mode (PgBouncer): each transaction may run on another
# server connection, so nothing may outlive one. Django's server-side cursors do (the CSV export's
# iterator then fetches in chunks instead); prepared statements would too, and Django already turns
# psycopg's off. docs/scaling.md, Database connections.
DATABASE_TRANSACTION_POOLING = env_bool("DATABASE_TRANSACTION_POOLING", False)
if DATABASE_TRANSACTION_POOLING and DATABASES["default"]["ENGINE"] == "mlsite.postgresql":
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache --------------------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL", "")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "mlsite.redis_cache.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
            "OPTIONS": {"MAX_ENTRIES": 100_000},
        }
    }
RESULT_CACHE_TTL = env_int("RESULT_CACHE_TTL", 7 * 24 * 3600, minimum=0)

# --- Celery -------------------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "broker"
    _broker_dir.mkdir(exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir),
        "data_folder_out": str(_broker_dir),
        "processed_folder": str(VAR_DIR / "broker-processed"),
        "control_folder": str(VAR_DIR / "broker-control"),  # exchange bindings (fanout: worker pings)
        "store_processed": False,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_QUEUE", "predictions")
# Remote control (the /readyz worker ping) per queue, so deployments sharing a broker don't answer for each other.
CELERY_CONTROL_EXCHANGE = f"mlsite-{CELERY_TASK_DEFAULT_QUEUE}"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fixup closes the database connection before and after every task unless this is
# set: a new PostgreSQL connection per task, about 10 ms before the first query (docs/performance.md,
# Database connections kept across tasks). With it, a worker process keeps its connection like a web process does; mlsite.celery
# closes it before a task when it is unusable or older than DB_CONN_MAX_AGE.
CELERY_DB_REUSE_MAX = 100_000
# One process per core (each with one torch thread) runs more texts per second on CPU than one
# process with every core (docs/performance.md, One worker process per core). Celery reads it as worker_concurrency.
CELERY_WORKER_CONCURRENCY = env_int("CELERY_WORKER_CONCURRENCY", min(os.cpu_count() or 1, 4), minimum=1)
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SOFT_TIME_LIMIT = env_int("TASK_SOFT_TIME_LIMIT", 120, minimum=1)
CELERY_TASK_TIME_LIMIT = env_int("TASK_TIME_LIMIT", 150, minimum=1)
CELERY_TASK_PUBLISH_RETRY = True
# Seconds a publish may wait for the broker's confirm: a hung broker (connections accepted, nothing
# answered) would otherwise hold the submitting request forever. The row is saved either way.
BROKER_PUBLISH_TIMEOUT = env_int("BROKER_PUBLISH_TIMEOUT", 5, minimum=1)
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

SWEEP_INTERVAL = env_int("SWEEP_INTERVAL", 60, minimum=1)
SWEEP_QUEUED_AFTER = env_int("SWEEP_QUEUED_AFTER", 120, minimum=1)
SWEEP_RUNNING_AFTER = env_int("SWEEP_RUNNING_AFTER", 600, minimum=1)
SWEEP_MAX_ROWS = env_int("SWEEP_MAX_ROWS", 10_000, minimum=1)
# Task results (django-celery-results) older than this are deleted by celery.backend_cleanup on beat.
TASK_RESULT_RETENTION_DAYS = env_int("TASK_RESULT_RETENTION_DAYS", 7, minimum=1)
CELERY_RESULT_EXPIRES = timedelta(days=TASK_RESULT_RETENTION_DAYS)
PURGE_BATCH_SIZE = env_int("PURGE_BATCH_SIZE", 1000, minimum=1)  # rows per transaction of purge_predictions
CELERY_BEAT_SCHEDULE = {
    "sweep-lost-predictions": {"task": "predictions.sweep", "schedule": float(SWEEP_INTERVAL)},
    "task-results-cleanup": {
        "task": "celery.backend_cleanup",
        "schedule": float(env_int("TASK_RESULT_CLEANUP_INTERVAL", 3600, minimum=60)),
    },
}

# --- Models and limits ----------------------------------------------------------------------
MLSITE_MODELS = env_models("MLSITE_MODELS", {"sentiment": "bundled:sentiment", "emotions": "bundled:emotions"})
DEFAULT_MODEL = env_str("DEFAULT_MODEL", "sentiment")
# A worker pool: the models this worker loads, claims and consumes the queues of; empty: all of them.
# The web ignores it (docs/scaling.md, Worker pools).
WORKER_MODELS = env_subset("WORKER_MODELS", MLSITE_MODELS)
# What a Celery worker does: `live`, the models' run tasks; `shadow`, only a shadowed version's answers,
# at the lowest CPU priority, so they take only the cores live work leaves (docs/architecture.md, Shadow traffic).
WORKER_ROLE = env_choice("WORKER_ROLE", "live", ("live", "shadow"))
# How often a process reads which model versions are active: a promotion reaches it within this time.
MODEL_VERSION_CHECK_SECONDS = env_int("MODEL_VERSION_CHECK_SECONDS", 5, minimum=0)
INFERENCE_DEVICE = env_str("INFERENCE_DEVICE", "auto")
INFERENCE_INT8 = env_bool("INFERENCE_INT8", False)
# BERT encoders run texts unpadded (docs/performance.md, Packed forward passes).
INFERENCE_PACKED = env_bool("INFERENCE_PACKED", True)
TORCH_THREADS = env_int("TORCH_THREADS", 0, minimum=0)  # 0: one per core, split among worker processes
MAX_TEXT_CHARS = env_int("MAX_TEXT_CHARS", 10_000, minimum=1)
MAX_REQUEST_BYTES = env_int("MAX_REQUEST_BYTES", 2 * 1024 * 1024, minimum=1024)
MAX_WAIT_SECONDS = 30
MAX_ATTEMPTS = env_int("MAX_ATTEMPTS", 3, minimum=1)  # a row whose worker died this often fails
# How texts are grouped, from the API to the model; each reads its name before the rename (`old`) for one release.
API_BATCH_MAX_TEXTS = env_int("API_BATCH_MAX_TEXTS", 1_000, minimum=1, old="MAX_BATCH_SIZE")  # in one POST /batches/
PUBLISH_CHUNK_ROWS = env_int("PUBLISH_CHUNK_ROWS", 128, minimum=1, old="BATCH_CHUNK_SIZE")  # rows per run-task message
CLAIM_MAX_ROWS = env_int("CLAIM_MAX_ROWS", 128, minimum=1, old="BATCH_MAX_SIZE")  # rows a worker claims at once
CLAIM_WAIT_MS = env_int("CLAIM_WAIT_MS", 5, minimum=0, old="BATCH_MAX_WAIT_MS")  # a claim waits this long for company
CLAIM_LOOP_SECONDS = env_int("CLAIM_LOOP_SECONDS", 10, minimum=0, old="BATCH_LOOP_SECONDS")  # a task claims this long
PASS_MAX_TEXTS = env_int("PASS_MAX_TEXTS", 16, minimum=1, old="INFERENCE_BATCH_SIZE")  # texts in one forward pass
PASS_MAX_TOKENS = env_int("PASS_MAX_TOKENS", 8192, minimum=64, old="BATCH_MAX_TOKENS")  # padded tokens in one pass
# Texts in one forward pass of bulk or background rows while single texts are flowing (this worker
# process ran one in the last second), where passes do not yield between layers (PASS_YIELD_LAYERS
# off, or an encoder that is not packed): a single text waits for the pass under way, so shorter
# passes answer it sooner (docs/performance.md, Shorter bulk passes while single texts flow); 0: PASS_MAX_TEXTS.
PASS_MAX_TEXTS_MIXED = env_int("PASS_MAX_TEXTS_MIXED", 4, minimum=0)
# A packed bulk or background pass stops between two encoder layers to run a single text submitted
# meanwhile (a Redis mark says one was; docs/architecture.md, Lanes): it waits for one layer, not a
# pass. Off by default: on W4 it did not beat shorter passes (docs/performance.md, Bulk passes that
# yield between encoder layers).
PASS_YIELD_LAYERS = env_bool("PASS_YIELD_LAYERS", False)
# Bulk and background rows a claim takes after the interactive ones: whole batches sorted by length
# run faster (docs/performance.md, Bulk claims as large as interactive ones); interactive texts sent
# meanwhile run between two of its passes (docs/architecture.md, Lanes).
CLAIM_BULK_ROWS = env_int("CLAIM_BULK_ROWS", CLAIM_MAX_ROWS, minimum=1)
# Percent of each claim's bulk-and-background rows kept for background work (reprocess, re-runs), so
# that it is never starved by bulk work; interactive rows always come first.
BACKGROUND_SHARE = env_int("BACKGROUND_SHARE", 20, minimum=0, maximum=100)
# How long a published wake-up counts as pending: single predictions submitted meanwhile send no
# message of their own (predictions/services/dispatch.py); 0: one message per prediction.
WAKEUP_COALESCE_MS = env_int("WAKEUP_COALESCE_MS", 1000, minimum=0)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BYTES
# Share of the texts workers answer that a shadowed model version also answers (on shadow workers).
SHADOW_RATE = env_fraction("SHADOW_RATE", 0.1)
# A shadow worker starts a pass only once its models' live traffic has paused this long (none queued,
# running or submitted meanwhile): for a host it shares with live workers. 0: it does not wait, for a
# shadow worker with cores of its own (docs/architecture.md, Shadow traffic).
SHADOW_LIVE_QUIET_MS = env_int("SHADOW_LIVE_QUIET_MS", 500, minimum=0)
# Shadow answers waiting (queued or running) past which no more are sampled: shadow workers that only
# get the time live traffic leaves fall behind under steady traffic, and the backlog stays bounded. 0: no limit.
SHADOW_MAX_QUEUED = env_int("SHADOW_MAX_QUEUED", 10000, minimum=0)
# Share of predictions drawn, when made, into the review desk's random audit sample (0.01 or 1%).
REVIEW_SAMPLE_RATE = env_fraction("REVIEW_SAMPLE_RATE", 0.01)

# --- Back-pressure, rate limits, idempotency (docs/api.md, Limits and back-pressure) ---------------
MAX_QUEUED = env_int("MAX_QUEUED", 10_000, minimum=0)  # predictions queued or running; 0: no limit
MAX_QUEUED_RETRY_AFTER = env_int("MAX_QUEUED_RETRY_AFTER", 5, minimum=1)  # Retry-After of the 503, seconds
DATABASE_RETRY_AFTER = env_int("DATABASE_RETRY_AFTER", 5, minimum=1)  # Retry-After of a 503 for a database outage
# POSTs per user; empty: off. Off by default: MAX_QUEUED guards the service, and any rate one client
# could reach throttled a single integration (docs/performance.md, A per-user submission rate by default).
THROTTLE_SUBMIT = env_rate("THROTTLE_SUBMIT", "")
THROTTLE_READ = env_rate("THROTTLE_READ", "")  # GETs per user; empty: off
# Seconds a web process remembers which user a token belongs to (changes reach every process at
# once through Redis; this bounds them without it); 0: look the token up on every request.
AUTH_TOKEN_CACHE_SECONDS = env_int("AUTH_TOKEN_CACHE_SECONDS", 10, minimum=0)
IDEMPOTENCY_TTL_HOURS = env_int("IDEMPOTENCY_TTL_HOURS", 24, minimum=1)
# Framework bypasses to turn off, running the framework's own code instead (mlsite/fastpaths.py): for
# measuring each one's gain, or ruling one out when something misbehaves; empty: all on.
FAST_PATHS_OFF = env_subset("FAST_PATHS_OFF", BYPASSES)

# --- REST framework -------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "predictions.api.authentication.CachedTokenAuthentication",  # Authorization: Token <key>
        "predictions.api.authentication.BearerTokenAuthentication",  # Authorization: Bearer <key>, the same tokens
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["predictions.api.parsers.BoundedJSONParser"],  # JSON bodies only; others are 415
    "DEFAULT_PAGINATION_CLASS": "predictions.api.pagination.PageNumberFieldPagination",
    "PAGE_SIZE": env_int("API_PAGE_SIZE", 50, minimum=1, maximum=1000),
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "predictions.api.errors.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": [
        "predictions.api.throttles.SubmitRateThrottle",
        "predictions.api.throttles.ReadRateThrottle",
    ],
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "mlsite API",
    "DESCRIPTION": "Text classification (sentiment, emotions) served asynchronously.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # operationIds and tags from the path after the version: predictions_create, batches_retrieve, …
    "SCHEMA_PATH_PREFIX": r"/api/v[0-9]+",
    "SWAGGER_UI_DIST": "SIDECAR",  # /api/docs/ works offline: its CSS and JS are static files of this project
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "predictions.api.schema.settings_limits",
    ],
}

# --- Login limits (django-axes; docs/operations.md, Login limits) ------------------------------------
# Every password login (the admin's, the browsable API's /api-auth/login/) goes through authenticate(),
# which the axes backend guards first. API tokens are not passwords and never reach it.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("LOGIN_LOCKOUT_MINUTES", 15, minimum=1))
# Each parameter locks on its own: an account whatever the address, an address whatever the account.
# The address is REMOTE_ADDR, the peer granian saw: no forwarded-for header is trusted.
_LOCKOUT_BY = env_subset("LOGIN_LOCKOUT_BY", ("username", "ip_address")) or {"username", "ip_address"}
AXES_LOCKOUT_PARAMETERS = [name for name in ("username", "ip_address") if name in _LOCKOUT_BY]
AXES_LOCKOUT_TEMPLATE = "admin/login_locked.html"
AXES_ENABLE_ACCESS_FAILURE_LOG = True  # every failed attempt kept for the audit, not only the counts
AXES_VERBOSE = False  # no start-up banner on every manage.py command (runstack's refusals are one line)

# --- The rest -------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "static")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = DEBUG
LOGIN_URL = "admin:login"

# --- Logs, metrics, readiness (docs/operations.md) ------------------------------
LOG_FORMAT = env_choice("LOG_FORMAT", "json", ("json", "plain"))
LOGGING = logging_config(log_format=LOG_FORMAT, level=env_str("LOG_LEVEL", "INFO"))

# prometheus_client's multiprocess mode: every process (granian workers, Celery workers) writes its
# samples to files here and /metrics sums them. The library reads the variable itself, so it is set
# here, before any metric exists; child processes inherit it.
PROMETHEUS_MULTIPROC_DIR = Path(env_str("PROMETHEUS_MULTIPROC_DIR", str(VAR_DIR / "metrics")))
PROMETHEUS_MULTIPROC_DIR.mkdir(parents=True, exist_ok=True)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(PROMETHEUS_MULTIPROC_DIR)
METRICS_TOKEN = env_str("METRICS_TOKEN", "")  # empty: /metrics answers loopback clients only

READYZ_WORKER_TIMEOUT_MS = env_int("READYZ_WORKER_TIMEOUT_MS", 1000, minimum=50)
READYZ_WORKER_CACHE_SECONDS = env_int("READYZ_WORKER_CACHE_SECONDS", 5, minimum=0)
READYZ_REQUIRE_WORKER = env_bool("READYZ_REQUIRE_WORKER", False)  # no worker: 503 rather than 200 degraded

# Training and evaluation data (never copied into the repository).
DATASETS_DIR = Path(env_str("DATASETS_DIR", str(BASE_DIR.parent / "shared" / "datasets")))
