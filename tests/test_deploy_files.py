"""docker-compose.yml and the Dockerfile: valid, healthy start order, non-root, and the commands docs/operations.md shows."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from predictions.management.commands.runstack import stack_commands

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_docker_compose_config_accepts_the_file():
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI_REQUIRE_COMPOSE"):
            pytest.fail("docker-compose is not installed (.ci/run installs Debian's docker-compose)")
        pytest.skip("docker-compose not installed; .ci/run installs it")
    result = subprocess.run(
        [binary, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_the_stack_has_its_six_services_with_the_asked_images():
    assert {"web", "worker", "beat", "postgres", "rabbitmq", "redis"} <= set(SERVICES)
    assert SERVICES["rabbitmq"]["image"] == "rabbitmq:3.13-management"
    assert SERVICES["redis"]["image"] == "redis:7"
    assert SERVICES["postgres"]["image"] == "postgres:16"


def test_every_backing_service_has_a_healthcheck_and_the_app_waits_for_it():
    for name in ("postgres", "rabbitmq", "redis", "web", "worker"):
        assert SERVICES[name]["healthcheck"]["test"], name
    for name in ("web", "worker"):
        conditions = {dep: spec["condition"] for dep, spec in SERVICES[name]["depends_on"].items()}
        assert conditions == {
            "migrate": "service_completed_successfully",
            "rabbitmq": "service_healthy",
            "redis": "service_healthy",
        }
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_app_runs_on_postgres_rabbitmq_and_redis_from_three_variables():
    for name in ("web", "worker", "beat", "migrate"):
        env = SERVICES[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://")
        assert env["CELERY_BROKER_URL"].startswith("amqp://")
        assert env["REDIS_URL"].startswith("redis://")
        assert env["DEBUG"] == "0"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    import re

    joined = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def compose_resolved() -> dict:
    """The services as `docker-compose config` resolves them (anchors merged); the YAML itself without it."""
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI_REQUIRE_COMPOSE"):
            pytest.fail("docker-compose is not installed (.ci/run installs Debian's docker-compose)")
        return SERVICES
    result = subprocess.run(
        [binary, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True, text=True, check=True
    )
    return yaml.safe_load(result.stdout)["services"]


def test_the_image_runs_as_a_non_root_user_that_owns_app_var():
    steps = dockerfile_instructions()
    assert [kind for kind, _ in steps].count("FROM") == 1  # one stage: its last USER is what runs
    users = [(i, args) for i, (kind, args) in enumerate(steps) if kind == "USER"]
    assert users, "the Dockerfile sets no USER: everything would run as root"
    position, user = users[-1]
    assert user not in ("root", "0") and not user.startswith(("root:", "0:"))
    created = [args for kind, args in steps[:position] if kind == "RUN" and "useradd" in args]
    assert created and f" {user}" in created[-1] and "--uid 0 " not in created[-1]
    owned = [args for kind, args in steps[:position] if kind == "RUN" and f"chown -R {user}:{user} /app/var" in args]
    assert owned, "/app/var must belong to the user the processes run as"
    assert any("MLSITE_VAR_DIR=/app/var" in args for kind, args in steps if kind == "ENV")  # var/ is that directory


@pytest.mark.parametrize("service", ["web", "worker", "beat", "migrate"])
def test_web_worker_and_beat_run_from_that_image_as_that_user_writing_only_under_app_var(service):
    spec = compose_resolved()[service]
    assert "user" not in spec, f"{service} overrides the image's non-root USER"
    context = spec["build"]["context"] if isinstance(spec["build"], dict) else spec["build"]
    assert Path(ROOT, context).resolve() == ROOT  # the image built from this Dockerfile
    assert any(str(volume).split(":")[1] == "/app/var" for volume in spec.get("volumes", [])), service
    if service == "beat":
        schedule = spec["command"][spec["command"].index("--schedule") + 1]
        assert schedule.startswith("/app/var/")


def test_every_requirement_is_pinned_exactly():
    import re

    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in lines if line]
    assert len(requirements) > 20
    loose = [
        line for line in requirements if not re.fullmatch(r"[A-Za-z0-9._-]+(\[[A-Za-z0-9,._-]+\])?==[\w.+!-]+", line)
    ]
    assert loose == [], "pin every requirement with == (a range lets a build pull an unaudited release)"


def _normalised(command: list[str]) -> list[str]:
    """Program names without their venv path; the host address and schedule path vary by deployment."""
    out = [os.path.basename(command[0]), *command[1:]]
    for flag in ("--host", "--schedule"):
        if flag in out:
            out[out.index(flag) + 1] = "<" + flag.strip("-") + ">"
    return out


@pytest.mark.parametrize("service", ["web", "worker", "beat"])
def test_compose_runs_the_same_commands_as_make_run_and_the_docs(service, settings):
    settings.CELERY_TASK_DEFAULT_QUEUE = "predictions"  # the default; tests run on a queue of their own
    local = stack_commands(bind="127.0.0.1:8000", web_workers=2, web_threads=16)[service]
    assert _normalised(SERVICES[service]["command"]) == _normalised(local)
    operations = (ROOT / "docs" / "operations.md").read_text()
    shown = " ".join(_normalised(local)).replace("<host>", "127.0.0.1").replace("<schedule>", "var/celerybeat-schedule")
    assert shown in operations, f"docs/operations.md does not show: {shown}"


def test_check_deploy_passes_with_the_production_settings_from_the_environment():
    import secrets
    import sys

    env = {
        **os.environ,
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "mlsite.example.com",
        "SECURE_SSL_REDIRECT": "1",
        "SECURE_PROXY_SSL_HEADER": "1",
        "SESSION_COOKIE_SECURE": "1",
        "CSRF_COOKIE_SECURE": "1",
        "SECURE_HSTS_SECONDS": "31536000",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
        "SECURE_HSTS_PRELOAD": "1",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_a_bad_setting_value_stops_start_up_naming_the_variable():
    import sys

    env = {**os.environ, "MAX_BATCH_SIZE": "lots"}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "MAX_BATCH_SIZE='lots': expected an integer" in result.stderr


def test_every_setting_read_from_the_environment_is_documented_in_the_configuration_page():
    import re

    settings_source = (ROOT / "mlsite" / "settings.py").read_text()
    names = set(re.findall(r'env_(?:str|int|bool|list|models|choice|rate)\(\s*"([A-Z0-9_]+)"', settings_source))
    configuration = (ROOT / "docs" / "configuration.md").read_text()
    assert len(names) > 20
    assert sorted(name for name in names if f"`{name}`" not in configuration) == []


def test_the_image_s_default_command_is_the_web_service_s():
    """`docker run` of the image alone starts the same web server as compose and `make run`."""
    import json

    [command] = [json.loads(args) for instruction, args in dockerfile_instructions() if instruction == "CMD"]
    assert command == SERVICES["web"]["command"]


@pytest.mark.django_db  # the whole WSGI app: request_started/finished check the database connection
def test_the_wsgi_application_drops_the_server_s_process_environment_from_each_request():
    """granian starts every request's environ from a copy of os.environ: DATABASE_URL and the like
    must not reach request.META (DEBUG error pages show it), nor HTTP_PROXY read as a header."""
    import io

    from mlsite.wsgi import application, environ_scrub

    process = {"DATABASE_URL": "postgres://u:secret@db/x", "HTTP_PROXY": "http://proxy:3128", "PATH_INFO": "/x"}
    request = {**process, "PATH_INFO": "/healthz", "REQUEST_METHOD": "GET", "HTTP_HOST": "localhost"}
    assert environ_scrub(dict(request), process) == {
        "PATH_INFO": "/healthz",
        "REQUEST_METHOD": "GET",
        "HTTP_HOST": "localhost",
    }
    assert environ_scrub({"HTTP_PROXY": "sent by the client"}, process) == {"HTTP_PROXY": "sent by the client"}

    environ = {
        **application.process_environ,  # what the server copied, as granian does
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/healthz",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "HTTP_HOST": "localhost",
        "wsgi.input": io.BytesIO(),
        "wsgi.url_scheme": "http",
    }
    statuses = []
    b"".join(application(environ, lambda status, headers, *_: statuses.append(status)))
    assert statuses == ["200 OK"]
    assert "DATABASE_URL" in application.process_environ  # make test sets it
    assert set(application.process_environ) & set(environ) <= {"PATH_INFO", "REQUEST_METHOD", "HTTP_HOST"}
