"""docker-compose.yml, the Dockerfile and the requirements files: valid, healthy start order, non-root, one web
server command (mlsite/webserver.py) everywhere, the image installing only what the app imports, and the commands
docs/operations.md shows."""

from __future__ import annotations

import ast
import io
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from mlsite import webserver
from predictions.management.commands.runstack import STACK_ENV, Command, stack_commands

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


def test_the_stack_has_its_services_with_the_asked_images():
    assert {"web", "worker", "shadow", "beat", "postgres", "rabbitmq", "redis"} <= set(SERVICES)
    assert SERVICES["rabbitmq"]["image"] == "rabbitmq:3.13-management"
    assert SERVICES["redis"]["image"] == "redis:7"
    assert SERVICES["postgres"]["image"] == "postgres:16"


def test_every_backing_service_has_a_healthcheck_and_the_app_waits_for_it():
    for name in ("postgres", "rabbitmq", "redis", "web", "worker", "shadow"):
        assert SERVICES[name]["healthcheck"]["test"], name
    for name in ("web", "worker", "shadow"):
        conditions = {dep: spec["condition"] for dep, spec in SERVICES[name]["depends_on"].items()}
        assert conditions == {
            "migrate": "service_completed_successfully",
            "rabbitmq": "service_healthy",
            "redis": "service_healthy",
        }
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_app_runs_on_postgres_rabbitmq_and_redis_from_three_variables():
    for name in ("web", "worker", "shadow", "beat", "migrate"):
        env = SERVICES[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://")
        assert env["CELERY_BROKER_URL"].startswith("amqp://")
        assert env["REDIS_URL"].startswith("redis://")
        assert env["DEBUG"] == "0"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
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
    assert user not in ("root", "0")
    assert not user.startswith(("root:", "0:"))
    created = [args for kind, args in steps[:position] if kind == "RUN" and "useradd" in args]
    assert created
    assert f" {user}" in created[-1]
    assert "--uid 0 " not in created[-1]
    owned = [args for kind, args in steps[:position] if kind == "RUN" and f"chown -R {user}:{user} /app/var" in args]
    assert owned, "/app/var must belong to the user the processes run as"
    assert any("MLSITE_VAR_DIR=/app/var" in args for kind, args in steps if kind == "ENV")  # var/ is that directory


@pytest.mark.parametrize("service", ["web", "worker", "shadow", "beat", "migrate"])
def test_web_worker_and_beat_run_from_that_image_as_that_user_writing_only_under_app_var(service):
    spec = compose_resolved()[service]
    assert "user" not in spec, f"{service} overrides the image's non-root USER"
    context = spec["build"]["context"] if isinstance(spec["build"], dict) else spec["build"]
    assert Path(ROOT, context).resolve() == ROOT  # the image built from this Dockerfile
    assert any(str(volume).split(":")[1] == "/app/var" for volume in spec.get("volumes", [])), service
    if service == "beat":
        schedule = spec["command"][spec["command"].index("--schedule") + 1]
        assert schedule.startswith("/app/var/")


def test_the_worker_scales_to_several_containers_each_checked_on_its_own():
    """`docker compose up --scale worker=3`: no name, hostname or host port that two containers would
    share, and each container's health is its own worker's ping, not any worker's on the broker."""
    worker = compose_resolved()["worker"]
    for fixed in ("container_name", "hostname", "ports"):
        assert fixed not in worker, f"worker sets {fixed}: a second replica would clash with the first"
    test = worker["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    # $$ in the file (a `config` may print it either way): the shell gets $HOSTNAME, the container's own
    assert re.search(r"inspect ping --destination celery@\$?\$HOSTNAME ", test[1]), test[1]
    assert "container_name" not in compose_resolved()["beat"]


def requirement_lines(name: str) -> list[str]:
    """The lines of a requirements file without comments and blank lines."""
    lines = [line.split("#")[0].strip() for line in (ROOT / name).read_text().splitlines()]
    return [line for line in lines if line]


def test_every_requirement_is_pinned_exactly():
    runtime, dev = requirement_lines("requirements.txt"), requirement_lines("requirements-dev.txt")
    assert len(runtime) > 20
    assert dev[0] == "-r requirements.txt"  # dev installs what the image installs, and more
    loose = [
        line
        for line in runtime + dev[1:]
        if not re.fullmatch(r"[A-Za-z0-9._-]+(\[[A-Za-z0-9,._-]+\])?==[\w.+!-]+", line)
    ]
    assert loose == [], "pin every requirement with == (a range lets a build pull an unaudited release)"
    assert "torch==2.13.0" in runtime


def test_the_image_installs_requirements_txt_only_and_make_install_both_files():
    steps = dockerfile_instructions()
    installs = [args for kind, args in steps if kind == "RUN" and "pip install" in args]
    assert len(installs) == 1
    assert installs[0].endswith(" -r requirements.txt")
    assert ("COPY", "requirements.txt .") in steps
    assert "requirements-dev" not in (ROOT / "Dockerfile").read_text()
    assert "$(STAMP): requirements.txt requirements-dev.txt" in (ROOT / "Makefile").read_text()


def test_one_build_argument_chooses_torch_s_cpu_or_cuda_build_and_cpu_is_the_default():
    """`docker build` gives the CPU image; `--build-arg TORCH_INDEX=` the GPU worker's (PyPI's CUDA torch)."""
    steps = dockerfile_instructions()
    assert ("ARG", "TORCH_INDEX=https://download.pytorch.org/whl/cpu") in steps
    [install] = [args for kind, args in steps if kind == "RUN" and "pip install" in args]
    assert '${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"}' in install  # nothing extra when it is empty
    expanded = subprocess.run(
        ["sh", "-c", 'echo pip install ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} -r requirements.txt'],
        env={"TORCH_INDEX": ""},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert expanded == ["pip", "install", "-r", "requirements.txt"]
    assert "torch==2.13.0" in requirement_lines("requirements.txt")  # the same pin either way


def _distributions_needed(requirements: list[str]) -> set[str]:
    """The installed distributions these requirement lines pull in, dependencies (and extras) included."""
    needed: set[str] = set()
    todo = [Requirement(line) for line in requirements]
    done: set[tuple[str, str]] = set()
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        extras = sorted(requirement.extras) or [""]
        if all((name, extra) in done for extra in extras):
            continue
        done.update((name, extra) for extra in extras)
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue  # a dependency for another platform or Python
        needed.add(name)
        for line in dist.requires or []:
            dependency = Requirement(line)
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": e}) for e in extras):
                todo.append(dependency)
    return needed


def test_the_code_that_ships_imports_only_what_requirements_txt_installs():
    """The web, worker, beat and management commands (mlsite/, predictions/, textclf/, manage.py): no import of a
    package that only requirements-dev.txt brings (the image would fail with ImportError)."""
    needed = _distributions_needed(requirement_lines("requirements.txt"))
    provided_by = packages_distributions()
    shipped = [
        *(ROOT / "mlsite").rglob("*.py"),
        *(ROOT / "predictions").rglob("*.py"),
        *(ROOT / "textclf").rglob("*.py"),
    ]
    files = [ROOT / "manage.py", *(path for path in shipped if "tests" not in path.relative_to(ROOT).parts)]
    outside: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in (m.split(".")[0] for m in modules):
                if module in sys.stdlib_module_names or module in ("mlsite", "predictions", "textclf"):
                    continue
                if not {canonicalize_name(d) for d in provided_by.get(module, [])} & needed:
                    outside.add(f"{module} ({path.relative_to(ROOT)})")
    assert sorted(outside) == []
    assert {"psutil", "pytest", "matplotlib", "pip-audit"}.isdisjoint(needed)  # dev tools stay out of the image


def _normalised(command: list[str]) -> list[str]:
    """Program names without their venv path; the host address and schedule path vary by deployment."""
    out = [os.path.basename(command[0]), *command[1:]]
    for flag in ("--host", "--schedule"):
        if flag in out:
            out[out.index(flag) + 1] = "<" + flag.strip("-") + ">"
    return out


@pytest.mark.parametrize("service", ["worker", "shadow", "beat"])
def test_compose_runs_the_same_worker_and_beat_commands_as_make_run_and_the_docs(service, settings):
    settings.CELERY_TASK_DEFAULT_QUEUE = "predictions"  # the default; tests run on a queue of their own
    local = stack_commands(bind="127.0.0.1:8000", web_workers=2, web_threads=16)[service]
    assert _normalised(SERVICES[service]["command"]) == _normalised(local)
    env = STACK_ENV.get(service, {})
    assert {key: SERVICES[service]["environment"][key] for key in env} == env  # what runstack sets, compose sets
    operations = (ROOT / "docs" / "operations.md").read_text()
    shown = " ".join(_normalised(local)).replace("<host>", "127.0.0.1").replace("<schedule>", "var/celerybeat-schedule")
    lines = [line for line in operations.splitlines() if shown in line]
    assert lines, f"docs/operations.md does not show: {shown}"
    assert all(f"{key}={value} " in lines[0] for key, value in env.items()), lines[0]


def test_the_docs_show_make_run_s_web_command():
    local = stack_commands(bind="127.0.0.1:8000", web_workers=2, web_threads=16)["web"]
    shown = " ".join(_normalised(local))
    assert shown in (ROOT / "docs" / "operations.md").read_text(), f"docs/operations.md does not show: {shown}"


def test_the_web_server_runs_granian_with_every_flag_of_the_deployed_command():
    """The command the image, compose and `make run` ran before mlsite/webserver.py held it, flag for flag."""
    command = webserver.granian_argv(bind="0.0.0.0:8000", workers=2, threads=16)
    assert command[0] == os.path.join(os.path.dirname(sys.executable), "granian")
    assert command[1:] == [
        *("--interface", "wsgi", "--host", "0.0.0.0", "--port", "8000", "--workers", "2", "--blocking-threads", "16"),
        *("--no-ws", "--http1-buffer-size", "16384", "--blocking-threads-idle-timeout", "600"),
        *("--respawn-failed-workers", "--workers-kill-timeout", "10", "mlsite.wsgi:application"),
    ]
    assert webserver.granian_argv() == webserver.granian_argv(bind="127.0.0.1:8000", workers=2, threads=16)


@pytest.mark.parametrize(
    ("bind", "host", "port"),
    [
        ("127.0.0.1:8123", "127.0.0.1", "8123"),
        ("localhost:8000", "127.0.0.1", "8000"),  # granian takes an address, not a name
        ("[::1]:8000", "::1", "8000"),
        (":8000", "0.0.0.0", "8000"),
        ("8000", "0.0.0.0", "8000"),
    ],
)
def test_the_bind_address_becomes_granian_s_host_and_port(bind, host, port):
    command = webserver.granian_argv(bind=bind)
    assert command[command.index("--host") + 1] == host
    assert command[command.index("--port") + 1] == port


def test_python_m_mlsite_webserver_execs_granian_with_its_options(monkeypatch):
    """The process becomes granian (same pid): Ctrl-C, docker stop and runstack's terminate reach it."""
    calls = []
    monkeypatch.setattr(os, "execv", lambda path, argv: calls.append((path, argv)))
    webserver.main(["--bind", "0.0.0.0:9000", "--workers", "3", "--threads", "8"])
    expected = webserver.granian_argv(bind="0.0.0.0:9000", workers=3, threads=8)
    assert calls == [(expected[0], expected)]
    printed = subprocess.run(
        [sys.executable, "-m", "mlsite.webserver", "--print"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert shlex.split(printed.stdout) == webserver.granian_argv()  # the defaults: 127.0.0.1:8000, 2 × 16


def test_the_image_compose_and_make_run_all_start_the_web_from_mlsite_webserver():
    """One source for granian's flags: no copy of them in the Dockerfile, compose or runstack."""
    [image] = [json.loads(args) for instruction, args in dockerfile_instructions() if instruction == "CMD"]
    assert image == SERVICES["web"]["command"] == ["python", "-m", "mlsite.webserver", "--bind", "0.0.0.0:8000"]
    local = stack_commands(bind="127.0.0.1:8000", web_workers=2, web_threads=16)["web"]
    assert local == [
        sys.executable,
        "-m",
        "mlsite.webserver",
        *("--bind", "127.0.0.1:8000", "--workers", "2", "--threads", "16"),
    ]
    for path in ("Dockerfile", "docker-compose.yml", "predictions/management/commands/runstack.py"):
        assert "--blocking-threads" not in (ROOT / path).read_text(), path


def test_make_run_s_web_defaults_are_the_web_server_s():
    options = Command().create_parser("manage.py", "runstack").parse_args([])
    assert (options.bind, options.web_workers, options.web_threads) == ("127.0.0.1:8000", 2, 16)
    assert (webserver.DEFAULT_BIND, webserver.DEFAULT_WORKERS, webserver.DEFAULT_THREADS) == ("127.0.0.1:8000", 2, 16)


def test_check_deploy_passes_with_the_production_settings_from_the_environment():
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
    env = {**os.environ, "API_BATCH_MAX_TEXTS": "lots"}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "API_BATCH_MAX_TEXTS='lots': expected an integer" in result.stderr


@pytest.mark.django_db  # the request cycle checks a connection an earlier test may have left open
def test_the_wsgi_application_drops_the_server_s_process_environment_from_each_request():
    """granian starts every request's environ from a copy of os.environ: DATABASE_URL and the like
    must not reach request.META (DEBUG error pages show it), nor HTTP_PROXY read as a header."""
    from mlsite.wsgi import application, environ_scrub  # noqa: PLC0415 (importing it builds the application from the environment)

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
