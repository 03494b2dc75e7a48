"""Nobody reads, lists, filters into, re-runs or exports another user's predictions, through the API or the admin.

Endpoints are enumerated from the URLconf, so a new one is covered (or must be named here) automatically.
Who sees everyone's rows: superusers, and staff with the view (or change) permission on the model, such
as the `reviewers` group, in the admin and in the API alike. Staff without it see only their own.
"""

from __future__ import annotations

import re

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.urls import URLResolver, get_resolver, reverse

from predictions.models import Batch, Prediction, PredictionResult, ReprocessRun
from tests.conftest import api_for

pytestmark = pytest.mark.django_db

SECRET = "owner private words good film"
METHODS = ("get", "post", "put", "patch", "delete")
# Open without credentials, on purpose: the API's description (no data in it) and the DRF login pages.
PUBLIC_API = {"api/schema/", "api/docs/"}
# Every route outside /admin/ and /api/ must be named here with what it is, so a new one forces a decision.
OTHER_ROUTES = {"healthz": "open: liveness", "readyz": "open: readiness", "api-auth/login/": "login page"}
OTHER_ROUTES["api-auth/logout/"] = "logout"
OTHER_ROUTES["^api/"] = "the last route under /api/: a JSON 404 for any path no route above matched"
OTHER_ROUTES["metrics"] = "counts only, no user data: loopback or METRICS_TOKEN (tests/test_observability.py)"


def routes(resolver=None, prefix: str = ""):
    """Every (route, name) of the URLconf, includes flattened: 'api/v1/predictions/<int:pk>/'."""
    for pattern in (resolver or get_resolver()).url_patterns:
        if isinstance(pattern, URLResolver):
            yield from routes(pattern, prefix + str(pattern.pattern))
        else:
            yield prefix + str(pattern.pattern), pattern.name


def api_routes() -> list[str]:
    return sorted(route for route, _ in routes() if route.startswith("api/") and route not in PUBLIC_API)


def filled(route: str, ids: dict[str, int]) -> str:
    """The route with each <converter:name> replaced by the id of the owner's object of that resource."""
    resource = route.rstrip("/").split("/")[-2] if "<" in route else ""
    return "/" + re.sub(r"<(?:\w+:)?\w+>", str(ids.get(resource, ids["predictions"])), route)


@pytest.fixture
def owners_rows(api, owner):
    """The owner's single prediction (with an earlier result) and a batch, all finished."""
    single = api.post("/api/v1/predictions/", {"text": SECRET}).json()
    batch = api.post("/api/v1/batches/", {"texts": [SECRET + " again", "bad plot"]}).json()
    PredictionResult.objects.create(prediction_id=single["id"], model_name="sentiment", label="negative")
    assert Prediction.objects.filter(owner=owner, status="succeeded").count() == 3
    return {"predictions": single["id"], "batches": batch["id"]}


def snapshot() -> list:
    return [
        *Prediction.objects.order_by("pk").values_list("pk", "owner_id", "status", "text", "label", "task_id"),
        PredictionResult.objects.count(),
        ReprocessRun.objects.count(),
    ]


def test_the_api_routes_are_the_ones_this_file_knows_and_every_other_route_is_named():
    assert api_routes() == [
        "api/v1/batches/",
        "api/v1/batches/<int:pk>/",
        "api/v1/models/",
        "api/v1/predictions/",
        "api/v1/predictions/<int:pk>/",
    ]  # a new one is covered by the tests below; add it here once it is
    other = {route for route, _ in routes() if not route.startswith(("admin/", "api/"))}
    assert other == set(OTHER_ROUTES)


def test_anonymous_requests_get_401_on_every_api_route_and_method(anonymous_api, owners_rows):
    before = snapshot()
    for route in api_routes():
        url = filled(route, owners_rows)
        for method in METHODS:
            response = getattr(anonymous_api.client, method)(url, {"text": "x", "texts": ["x"]}, format="json")
            assert response.status_code == 401, (method, url, response.status_code)
            assert response["WWW-Authenticate"] == "Token"
            assert SECRET not in response.content.decode()
    assert snapshot() == before


def test_the_open_routes_hold_no_user_data(anonymous_api, client, owners_rows):
    assert client.get("/healthz").json() == {"status": "ok"}
    for route in PUBLIC_API:
        response = anonymous_api.get("/" + route)
        assert response.status_code == 200
        assert SECRET not in response.content.decode()


def test_another_user_can_not_read_list_filter_into_or_change_the_owners_rows(stranger_api, owners_rows):
    before = snapshot()
    for route in api_routes():
        url = filled(route, owners_rows)
        for method in METHODS:
            response = getattr(stranger_api.client, method)(url, {}, format="json")
            assert SECRET not in response.content.decode(), (method, url)
            if "<" in route:  # another user's object does not exist for this user, whatever the method
                assert response.status_code in (404, 405), (method, url, response.status_code)
            assert response.status_code < 500
    for query in (
        f"batch={owners_rows['batches']}",
        "status=succeeded",
        "model=sentiment",
        "label=positive",
        "label=negative",
        "created_after=2000-01-01T00:00:00Z",
    ):
        response = stranger_api.get(f"/api/v1/predictions/?{query}")
        assert response.status_code == 200, query
        assert response.json()["results"] == [], query
    assert snapshot() == before


def test_staff_without_the_view_permission_see_only_their_own_rows_in_the_api(
    django_user_model, owners_rows, django_capture_on_commit_callbacks
):
    clerk = django_user_model.objects.create_user("clerk", password="pw-clerk-1234", is_staff=True)
    clerk_api = api_for(clerk, django_capture_on_commit_callbacks)
    assert clerk_api.get("/api/v1/predictions/").json()["results"] == []
    assert clerk_api.get(f"/api/v1/predictions/{owners_rows['predictions']}/").status_code == 404
    assert clerk_api.get(f"/api/v1/batches/{owners_rows['batches']}/").status_code == 404


def test_reviewers_and_superusers_see_everyones_rows_in_the_api(
    django_user_model, owners_rows, django_capture_on_commit_callbacks
):
    rita = django_user_model.objects.create_user("rita", password="pw-rita-1234", is_staff=True)
    rita.groups.add(Group.objects.get(name="reviewers"))
    root = django_user_model.objects.create_superuser("root", password="pw-root-1234")
    for user in (rita, root):
        client = api_for(user, django_capture_on_commit_callbacks)
        assert client.get("/api/v1/predictions/").json()["count"] == 3
        assert client.get(f"/api/v1/predictions/{owners_rows['predictions']}/").json()["text"] == SECRET
        assert client.get(f"/api/v1/batches/{owners_rows['batches']}/").status_code == 200


def admin_urls(object_ids: dict[type, int]) -> list[str]:
    """The admin's index, each app's index, and every registered model's pages (with an object of it)."""
    urls = [reverse("admin:index"), reverse("admin:predictions_prediction_overview")]
    for model in admin.site._registry:
        info = (model._meta.app_label, model._meta.model_name)
        urls.append(reverse("admin:app_list", args=[info[0]]))
        urls += [reverse(f"admin:{info[0]}_{info[1]}_{page}") for page in ("changelist", "add")]
        pk = object_ids.get(model, 1)
        urls += [reverse(f"admin:{info[0]}_{info[1]}_{page}", args=[pk]) for page in ("change", "delete", "history")]
    return sorted(set(urls))


def rerun_and_export(client, ids: list[int]):
    changelist = reverse("admin:predictions_prediction_changelist")
    rerun = client.post(changelist, {"action": "rerun", "_selected_action": ids})
    export = client.post(changelist, {"action": "export_csv", "_selected_action": ids})
    return rerun, export


@pytest.mark.parametrize("who", ["anonymous", "owner", "stranger"])
def test_users_who_are_not_staff_can_not_reach_the_admin_at_all(who, client, owner, stranger, owners_rows):
    if who != "anonymous":
        client.force_login(owner if who == "owner" else stranger)
    before = snapshot()
    ids = {Prediction: owners_rows["predictions"], Batch: owners_rows["batches"]}
    for url in admin_urls(ids):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/admin/login/"), url
    for response in rerun_and_export(client, list(Prediction.objects.values_list("pk", flat=True))):
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/")
        assert SECRET not in response.content.decode()
    assert snapshot() == before


def test_staff_without_permissions_get_403_on_predictions_and_can_not_re_run_or_export(
    client, django_user_model, owners_rows
):
    clerk = django_user_model.objects.create_user("clerk", password="pw-clerk-1234", is_staff=True)
    client.force_login(clerk)
    before = snapshot()
    pk = owners_rows["predictions"]
    for name, args in [
        ("predictions_prediction_changelist", []),
        ("predictions_prediction_change", [pk]),
        ("predictions_prediction_overview", []),
        ("predictions_predictionresult_changelist", []),
        ("predictions_batch_change", [owners_rows["batches"]]),
    ]:
        response = client.get(reverse(f"admin:{name}", args=args))
        assert response.status_code == 403, name
        assert SECRET not in response.content.decode(), name
    for response in rerun_and_export(client, [pk]):
        assert response.status_code == 403
        assert SECRET not in response.content.decode()
    assert snapshot() == before


def test_reviewers_see_re_run_and_export_everyones_rows_in_the_admin_by_design(client, django_user_model, owners_rows):
    rita = django_user_model.objects.create_user("rita", password="pw-rita-1234", is_staff=True)
    rita.groups.add(Group.objects.get(name="reviewers"))
    client.force_login(rita)
    assert SECRET in client.get(reverse("admin:predictions_prediction_changelist")).content.decode()
    rerun, export = rerun_and_export(client, [owners_rows["predictions"]])
    assert rerun.status_code == 302
    assert ReprocessRun.objects.filter(created_by=rita).count() == 1
    assert export.status_code == 200
    assert SECRET in b"".join(export.streaming_content).decode()
