"""deploy/k8s/: every built-in object valid against the Kubernetes schemas (kubernetes-validate, offline),
the KEDA objects against the ScaledObject and TriggerAuthentication fields KEDA's CRDs define, and the
whole consistent with the image, docker-compose.yml and the app (commands, probes, the scaler's query)."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30"  # the oldest release the manifests target (autoscaling/v2, batch/v1 ttl)
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())

# The fields of KEDA's keda.sh/v1alpha1 CRDs (config/crd/bases in kedacore/keda) these objects may use.
SCALED_OBJECT_SPEC = {
    "advanced",
    "cooldownPeriod",
    "fallback",
    "idleReplicaCount",
    "initialCooldownPeriod",
    "maxReplicaCount",
    "minReplicaCount",
    "pollingInterval",
    "scaleTargetRef",
    "triggers",
}
SCALE_TARGET_REF = {"apiVersion", "envSourceContainerName", "kind", "name"}
TRIGGER = {"authenticationRef", "metadata", "metricType", "name", "type", "useCachedMetrics"}
# The postgresql scaler's parameters, as KEDA documents them (keda.sh/docs/scalers/postgresql).
POSTGRESQL_METADATA = {
    "query",
    "targetQueryValue",
    "activationTargetQueryValue",
    "connectionFromEnv",
    "host",
    "port",
    "userName",
    "passwordFromEnv",
    "dbName",
    "sslmode",
    "metricName",
}
POSTGRESQL_AUTH_PARAMETERS = {"connection", "host", "port", "userName", "password", "dbName", "sslmode"}


def documents() -> list[dict]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def named(kind: str, name: str) -> dict:
    [doc] = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


POOLS = ("sentiment", "emotions")  # one worker Deployment per model served by default (MLSITE_MODELS)


def containers() -> list[tuple[dict, dict]]:
    """(pod spec, container) of every workload."""
    found = []
    for doc in documents():
        if doc["kind"] in ("Deployment", "Job"):
            pod = doc["spec"]["template"]["spec"]
            found += [(pod, container) for container in pod["containers"]]
    return found


def test_kustomization_lists_every_manifest_and_nothing_else():
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize(
    "doc",
    [d for d in documents() if not d["apiVersion"].startswith("keda.sh/")],
    ids=lambda d: f"{d['kind']}/{d['metadata']['name']}",
)
def test_every_built_in_object_is_valid_against_the_kubernetes_schema(doc):
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # strict: no field the schema lacks


def test_a_field_the_schema_lacks_is_refused():
    """The check above can fail: a misspelt field is an error under strict validation."""
    broken = named("Deployment", "mlsite-web")
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("model", POOLS)
def test_each_pool_s_scaled_object_uses_only_keda_s_fields_and_targets_its_deployment(model):
    scaled = named("ScaledObject", f"mlsite-worker-{model}")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= SCALED_OBJECT_SPEC
    assert set(spec["scaleTargetRef"]) <= SCALE_TARGET_REF
    assert spec["scaleTargetRef"]["name"] == f"mlsite-worker-{model}"  # kind defaults to Deployment
    assert named("Deployment", spec["scaleTargetRef"]["name"])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["pollingInterval"] >= 1
    assert spec["cooldownPeriod"] >= 0
    [trigger] = spec["triggers"]
    assert set(trigger) <= TRIGGER
    assert trigger["type"] == "postgresql"
    assert set(trigger["metadata"]) <= POSTGRESQL_METADATA
    assert all(isinstance(value, str) for value in trigger["metadata"].values())  # a map of strings in the CRD
    assert float(trigger["metadata"]["targetQueryValue"]) > 0
    auth = named("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert set(auth["spec"]) == {"secretTargetRef"}
    for ref in auth["spec"]["secretTargetRef"]:
        assert set(ref) == {"parameter", "name", "key"}
        assert ref["parameter"] in POSTGRESQL_AUTH_PARAMETERS
        assert ref["name"] == "mlsite"  # the Secret every pod reads
    assert {ref["key"] for ref in auth["spec"]["secretTargetRef"]} == {"DATABASE_URL"}


def test_the_pools_serve_every_bundled_model_each_its_own():
    served = []
    for model in POOLS:
        [worker] = named("Deployment", f"mlsite-worker-{model}")["spec"]["template"]["spec"]["containers"]
        served.append(next(e["value"] for e in worker["env"] if e["name"] == "WORKER_MODELS"))
    assert sorted(served) == sorted(POOLS)
    bundled = sorted(p.name for p in (ROOT / "predictions" / "bundled_models").iterdir() if p.is_dir())
    assert sorted(POOLS) == bundled  # what MLSITE_MODELS serves by default
    workers = [
        d for d in documents() if d["kind"] == "Deployment" and d["metadata"]["name"].startswith("mlsite-worker")
    ]
    assert len(workers) == len(POOLS) + 1  # and the shadow worker


def test_the_shadow_worker_is_one_pod_of_its_own_role_with_a_cpu_request_of_its_own():
    """Its share of a busy node is its own request: SCHED_IDLE orders processes inside a pod only."""
    shadow = named("Deployment", "mlsite-worker-shadow")
    [container] = shadow["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {key: str(value) for key, value in COMPOSE["services"]["shadow"]["environment"].items() if key in env}
    assert env["WORKER_ROLE"] == "shadow"
    assert shadow["spec"]["replicas"] == 1
    assert not [
        d
        for d in documents()
        if d["kind"] == "ScaledObject" and d["spec"]["scaleTargetRef"]["name"] == "mlsite-worker-shadow"
    ]


@pytest.mark.django_db
def test_each_pool_s_query_counts_its_model_s_queued_rows_on_the_real_database(owner):
    from predictions.models import Prediction, PredictionStatus  # noqa: PLC0415 (models: after Django's setup)

    for model, statuses in (("sentiment", "qqs"), ("emotions", "qrq")):
        for code in statuses:
            status = {"q": PredictionStatus.QUEUED, "s": PredictionStatus.SUCCEEDED, "r": PredictionStatus.RUNNING}[
                code
            ]
            Prediction.objects.create(owner=owner, text="t", model_name=model, status=status)
    for model in POOLS:
        query = named("ScaledObject", f"mlsite-worker-{model}")["spec"]["triggers"][0]["metadata"]["query"]
        assert Prediction._meta.db_table in query
        with connection.cursor() as cursor:
            cursor.execute(query)
            assert cursor.fetchall() == [(2,)]  # one integer, as the scaler needs: its model's queued rows


def test_every_pod_runs_as_the_image_s_non_root_user_with_limits_and_the_secret():
    assert containers()
    for pod, container in containers():
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's useradd --uid
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert container["resources"]["requests"]["cpu"]
        assert container["resources"]["limits"]["memory"]
        sources = {next(iter(source)): next(iter(source.values()))["name"] for source in container["envFrom"]}
        assert sources == {"configMapRef": "mlsite", "secretRef": "mlsite"}
        mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
        assert {"/app/var", "/tmp"} <= mounts  # what the processes write, on a read-only root filesystem
    assert "useradd --create-home --uid 10001 mlsite" in (ROOT / "Dockerfile").read_text()
    config = named("ConfigMap", "mlsite")["data"]
    assert not {"DATABASE_URL", "SECRET_KEY", "CELERY_BROKER_URL", "REDIS_URL", "METRICS_TOKEN"} & set(config)


def test_web_worker_beat_and_migrations_run_the_commands_compose_runs():
    def command(kind: str, name: str) -> list[str]:
        [container] = named(kind, name)["spec"]["template"]["spec"]["containers"]
        return container["command"]

    assert command("Deployment", "mlsite-web") == COMPOSE["services"]["web"]["command"]
    for model in POOLS:
        assert command("Deployment", f"mlsite-worker-{model}") == COMPOSE["services"]["worker"]["command"]
    assert command("Deployment", "mlsite-worker-shadow") == COMPOSE["services"]["shadow"]["command"]
    assert command("Deployment", "mlsite-beat") == COMPOSE["services"]["beat"]["command"]
    assert command("Job", "mlsite-migrate") == COMPOSE["services"]["migrate"]["command"]


def test_the_web_is_probed_on_healthz_and_readyz_and_served_and_scaled():
    web = named("Deployment", "mlsite-web")
    [container] = web["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    [port] = container["ports"]
    assert port["containerPort"] == 8000
    assert container["command"][-1].endswith(":8000")
    service = named("Service", "mlsite-web")
    assert service["spec"]["selector"] == web["spec"]["selector"]["matchLabels"]
    hpa = named("HorizontalPodAutoscaler", "mlsite-web")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mlsite-web"}


def test_beat_is_exactly_one_pod_never_two_during_a_rollout_and_the_worker_pings_itself():
    beat = named("Deployment", "mlsite-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    assert not [d for d in documents() if d.get("spec", {}).get("scaleTargetRef", {}).get("name") == "mlsite-beat"]
    for model in POOLS:
        [worker] = named("Deployment", f"mlsite-worker-{model}")["spec"]["template"]["spec"]["containers"]
        assert "inspect ping --destination celery@$HOSTNAME" in worker["livenessProbe"]["exec"]["command"][-1]
        assert {"name": "CELERY_WORKER_CONCURRENCY", "value": "2"} in worker["env"]
        assert worker["resources"]["requests"]["cpu"] == "2"  # one pool process per requested core
