"""The review and audit desk.

Model output is read-only here: reviewers may only set a correction and a note (each one recorded
with who and when), and only superusers may delete. Lists are tuned for big tables: related rows
are joined, counts are not run on every page, exports stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpResponseNotAllowed, HttpResponseRedirect, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import mark_safe

from predictions.charts import PALETTE, bars_svg, paired_bars_svg, reliability_svg, stacked_columns_svg
from predictions.export import csv_rows
from predictions.models import (
    FINISHED_STATUSES,
    Batch,
    ModelVersion,
    ModelVersionState,
    Prediction,
    PredictionResult,
    PredictionReview,
    PredictionStatus,
    ReprocessRun,
)
from predictions.overview import overview_figures, wilson_interval
from predictions.quality import model_quality
from predictions.registry import model_exists, model_info_get, model_names
from predictions.selectors import (
    batch_figures,
    model_versions_seen,
    reprocess_summary,
    review_queue,
    reviewed_agreement,
    shadow_agreement,
)
from predictions.services.reprocess import predictions_rerun
from predictions.services.review import prediction_review, predictions_mark_reviewed
from predictions.services.shadow import shadow_compare_on_reviews, shadow_start, shadow_stop
from predictions.services.versions import VersionRefused, model_version_promote, model_version_rollback
from textclf import ModelLoadError

# The app list beside every page takes a quarter of a 1280-pixel screen the prediction list needs;
# the home page and the breadcrumbs lead everywhere it does.
admin.site.enable_nav_sidebar = False


class LabelFilter(admin.SimpleListFilter):
    title = "label"
    parameter_name = "label"

    def lookups(self, request, model_admin):
        labels = Prediction.objects.exclude(label="").values_list("label", flat=True).distinct().order_by("label")
        return [(label, label) for label in labels[:200]]

    def queryset(self, request, queryset):
        return queryset.filter(label=self.value()) if self.value() else queryset


class ReviewedFilter(admin.SimpleListFilter):
    title = "reviewed"
    parameter_name = "reviewed"

    def lookups(self, request, model_admin):
        return [("yes", "Reviewed"), ("no", "Not reviewed"), ("corrected", "Corrected")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(reviewed_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(reviewed_at__isnull=True)
        if self.value() == "corrected":
            return queryset.exclude(corrected_label="")
        return queryset


class ReviewForm(forms.ModelForm):
    """Only the review fields are editable; the correction must be one of the model's labels."""

    corrected_label = forms.ChoiceField(required=False, label="Correct label")

    class Meta:
        model = Prediction
        fields = ("corrected_label", "review_note")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        labels = list((self.instance.scores or {}).keys())
        if not labels and model_exists(self.instance.model_name):
            try:
                labels = model_info_get(self.instance.model_name).labels
            except (ModelLoadError, OSError):
                labels = []
        corrected = cast(forms.ChoiceField, self.fields["corrected_label"])
        corrected.choices = [("", "— model is right / no correction —")] + [(x, x) for x in labels]


@admin.register(Prediction)
class PredictionAdmin(admin.ModelAdmin):
    form = ReviewForm
    # Nine short columns that fit 1280 px beside the filters: the text on one line (whole on hover and
    # on its page), a reviewer's correction beside the model's label, a cache hit as its status; the
    # finish time and duration are on the prediction's page.
    list_display = (
        "id",
        "short_text",
        "label_display",
        "score_display",
        "model_display",
        "status_display",
        "owner_display",
        "batch_link",
        "created_display",
    )
    list_filter = (
        "status",
        "model_name",
        LabelFilter,
        ReviewedFilter,
        "cached",
        ("owner", admin.RelatedOnlyFieldListFilter),
    )
    date_hierarchy = "created_at"
    search_fields = ("=id", "text")
    search_help_text = "Search by text, or by an exact prediction id."
    ordering = ("-id",)
    list_select_related = ("owner", "batch")
    list_per_page = 50
    show_full_result_count = False
    actions = ("rerun", "mark_reviewed", "export_csv")
    fieldsets = (
        (None, {"fields": ["text_display", "label", "score_bars", "labels", "status", "error"]}),
        ("Model", {"fields": ["model_name", "model_version", "margin", "cached", "task_link", "attempts"]}),
        (
            "Review",
            {
                "fields": [
                    "corrected_label",
                    "review_note",
                    "reviewed_by",
                    "reviewed_at",
                    "review_sample",
                    "review_trail",
                ]
            },
        ),
        (
            "Audit",
            {
                "fields": [
                    "owner",
                    "batch",
                    "created_at",
                    "started_at",
                    "finished_at",
                    "duration",
                    "redacted_at",
                    "history_table",
                ]
            },
        ),
    )
    # Everything shown is read-only but the reviewer's two fields (model output is never edited here).
    readonly_fields = tuple(
        field  # type: ignore[misc]  # these fieldsets list single names, no groups
        for _, options in fieldsets
        for field in options["fields"]
        if field not in ("corrected_label", "review_note")
    )

    # --- permissions: model output is read-only; deletes are for superusers ---------------------
    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return request.user.is_superuser

    def has_rerun_permission(self, request) -> bool:
        return request.user.has_perm("predictions.change_prediction")

    # --- columns -----------------------------------------------------------------------------
    @admin.display(description="text")
    def short_text(self, obj: Prediction):
        short = obj.text if len(obj.text) <= 200 else obj.text[:199] + "…"
        return format_html('<span class="one-line" title="{}">{}</span>', short, short)

    @admin.display(description="label", ordering="label")
    def label_display(self, obj: Prediction):
        if obj.corrected_label and obj.corrected_label != obj.label:
            return format_html(
                '<span class="one-line label" title="the model said {}; a reviewer corrected it to {}">'
                "{} → <strong>{}</strong></span>",
                obj.label,
                obj.corrected_label,
                obj.label,
                obj.corrected_label,
            )
        return format_html('<span class="one-line label" title="{}">{}</span>', obj.label, obj.label or "—")

    @admin.display(description="status", ordering="status")
    def status_display(self, obj: Prediction):
        if obj.cached:
            return format_html('<span title="succeeded: answered from the result cache">cached</span>')
        return obj.status

    @admin.display(description="owner", ordering="owner__username")
    def owner_display(self, obj: Prediction):
        return format_html('<span class="one-line owner" title="{}">{}</span>', obj.owner, obj.owner)

    @admin.display(description="created", ordering="created_at")
    def created_display(self, obj: Prediction):
        created = timezone.localtime(obj.created_at)  # the year is in the date bar above and on hover
        return format_html(
            '<span title="{}">{}</span>',
            created.isoformat(sep=" ", timespec="seconds"),
            created.strftime("%m-%d %H:%M"),
        )

    @admin.display(description="score", ordering="score")
    def score_display(self, obj: Prediction) -> str:
        return "" if obj.score is None else f"{obj.score:.3f}"

    @admin.display(description="model", ordering="model_name")
    def model_display(self, obj: Prediction):
        if not obj.model_version:
            return obj.model_name
        return format_html('<span title="{}">{}@{}</span>', obj.model_version, obj.model_name, obj.model_version[:6])

    @admin.display(description="batch", ordering="batch")
    def batch_link(self, obj: Prediction):
        if obj.batch_id is None:
            return "—"
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:predictions_batch_change", args=[obj.batch_id]), obj.batch_id
        )

    @admin.display(description="duration")
    def duration(self, obj: Prediction) -> str:
        seconds = obj.duration_seconds
        return "—" if seconds is None else f"{seconds:.2f} s"

    # --- detail page -------------------------------------------------------------------------
    @admin.display(description="text")
    def text_display(self, obj: Prediction):
        return format_html(
            '<div class="prediction-text" style="white-space: pre-wrap; max-width: 60em">{}</div>', obj.text
        )

    @admin.display(description="scores")
    def score_bars(self, obj: Prediction):
        if not obj.scores:
            return "—"
        ordered = sorted(obj.scores.items(), key=lambda item: item[1], reverse=True)
        return format_html(
            '<div class="score-bars">{}</div>',
            format_html_join(
                "",
                '<div class="score-row" style="display:flex;align-items:center;gap:.5em;margin:2px 0">'
                '<span style="width:9em;text-align:right">{}</span>'
                '<span style="display:inline-block;width:{}px;height:12px;background:{}" title="{}"></span>'
                "<span>{}</span></div>",
                (
                    (
                        label,
                        max(1, round(score * 300)),
                        "#417690" if label == obj.label else "#79aec8",
                        f"{score:.4f}",
                        f"{score:.4f}",
                    )
                    for label, score in ordered
                ),
            ),
        )

    @admin.display(description="Celery task")
    def task_link(self, obj: Prediction):
        if not obj.task_id:
            return "—"
        url = reverse("admin:django_celery_results_taskresult_changelist") + f"?task_id={obj.task_id}"
        return format_html('<a href="{}">{}</a>', url, obj.task_id)

    @admin.display(description="result history")
    def history_table(self, obj: Prediction):
        rows = list(obj.history.select_related("run").order_by("-pk"))
        if not rows:
            return "No earlier results: this is the first run."
        return format_html(
            '<table class="result-history"><thead><tr><th>replaced at</th><th>model</th><th>status</th><th>label</th>'
            "<th>score</th><th>scores</th><th>finished</th><th>by run</th></tr></thead><tbody>{}</tbody></table>",
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}@{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                (
                    (
                        r.archived_at.strftime("%Y-%m-%d %H:%M:%S"),
                        r.model_name,
                        r.model_version[:8],
                        r.status,
                        r.label or "—",
                        "" if r.score is None else f"{r.score:.3f}",
                        ", ".join(f"{k} {v:.2f}" for k, v in sorted((r.scores or {}).items(), key=lambda i: -i[1])[:5]),
                        r.finished_at.strftime("%Y-%m-%d %H:%M:%S") if r.finished_at else "—",
                        f"run {r.run_id} ({r.run.source})" if r.run else "—",
                    )
                    for r in rows
                ),
            ),
        )

    @admin.display(description="corrections")
    def review_trail(self, obj: Prediction):
        reviews = list(obj.reviews.select_related("reviewer").order_by("-pk")[:50])
        if not reviews:
            return "—"
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                "<li>{} by {}: {} {}</li>",
                (
                    (
                        r.created_at.strftime("%Y-%m-%d %H:%M"),
                        r.reviewer.get_username(),
                        r.corrected_label or "(no correction)",
                        f"— {r.note}" if r.note else "",
                    )
                    for r in reviews
                ),
            ),
        )

    def save_model(self, request, obj: Prediction, form, change: bool) -> None:
        """Record who corrected what and when; nothing but the review fields is ever written here."""
        if not form.has_changed():
            return
        with transaction.atomic():
            prediction_review(
                prediction=obj,
                reviewer=request.user,
                corrected_label=form.cleaned_data["corrected_label"],
                note=form.cleaned_data["review_note"],
            )

    # --- actions -----------------------------------------------------------------------------
    @admin.action(description="Re-run selected predictions (earlier results kept in history)", permissions=["rerun"])
    def rerun(self, request, queryset):
        selected = queryset.count()
        run, queued = predictions_rerun(queryset=queryset, user=request.user)
        skipped = selected - queued
        self.message_user(
            request,
            f"Queued {queued} prediction(s) for re-run (run {run.pk})."
            + (f" {skipped} still queued or running were left alone." if skipped else ""),
            messages.SUCCESS,
        )

    @admin.action(description="Mark selected predictions as reviewed", permissions=["change"])
    def mark_reviewed(self, request, queryset):
        updated = predictions_mark_reviewed(queryset=queryset, reviewer=request.user)
        self.message_user(request, f"Marked {updated} prediction(s) as reviewed.", messages.SUCCESS)

    @admin.action(description="Export selected predictions as CSV", permissions=["view"])
    def export_csv(self, request, queryset):
        response = StreamingHttpResponse(csv_rows(queryset), content_type="text/csv; charset=utf-8")
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        response["Content-Disposition"] = f'attachment; filename="predictions-{stamp}.csv"'
        return response

    # --- review queue ------------------------------------------------------------------------
    REVIEW_PAGE = 25  # items on one page of the queue; reviewed ones leave it, so the next load goes on

    def review_queue_view(self, request):
        """Unreviewed answers, most uncertain first (or the audit sample), decided in place: each
        item's buttons post to review_decide_view; with JavaScript the page stays and the keyboard
        moves through it (j/k, 1–9 a label, Enter confirms)."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        model_name = request.GET.get("model", "")
        model_name = model_name if model_name in model_names() else ""
        version = request.GET.get("version", "")[:64] if model_name else ""
        sample = request.GET.get("sample") == "1"
        queue = review_queue(model_name=model_name, model_version=version, sample=sample)
        items = [
            (row, sorted((row.scores or {}).items(), key=lambda item: item[1], reverse=True))
            for row in queue.select_related("owner")[: self.REVIEW_PAGE]
        ]
        waiting = queue[: 10_000 + 1].count()  # capped: the count of a big queue is not worth a full scan
        context = {
            **self.admin_site.each_context(request),
            "title": "Audit sample" if sample else "Review queue",
            "opts": self.model._meta,
            "items": items,
            "waiting": "10,000+" if waiting > 10_000 else f"{waiting:,}",
            "sample": sample,
            "model": model_name,
            "version": version,
            "models": model_names(),
            "versions": model_versions_seen(model_name) if model_name else [],
            "here": request.get_full_path(),
        }
        return TemplateResponse(request, "admin/predictions/review_queue.html", context)

    def review_decide_view(self, request, pk: int):
        """Confirm (no correction) or correct one prediction; JSON for the queue's script, else back to `next`."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_change_permission(request):
            raise PermissionDenied
        prediction = get_object_or_404(Prediction, pk=pk)
        label = request.POST.get("corrected_label", "")
        form = ReviewForm(
            data={
                "corrected_label": "" if label == prediction.label else label,
                "review_note": request.POST.get("note", ""),
            },
            instance=prediction,
        )
        wants_json = request.headers.get("Accept", "").startswith("application/json")
        if not form.is_valid():
            errors = {field: [str(e) for e in messages_] for field, messages_ in form.errors.items()}
            if wants_json:
                return JsonResponse({"errors": errors}, status=400)
            self.message_user(request, f"Prediction {pk} not reviewed: {errors}", messages.ERROR)
        else:
            with transaction.atomic():
                prediction_review(
                    prediction=prediction,
                    reviewer=request.user,
                    corrected_label=form.cleaned_data["corrected_label"],
                    note=form.cleaned_data["review_note"],
                )
            if wants_json:
                return JsonResponse(
                    {
                        "id": prediction.pk,
                        "label": prediction.label,
                        "corrected_label": prediction.corrected_label,
                        "reviewed_by": request.user.get_username(),
                    }
                )
        back = request.POST.get("next", "")
        if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}):
            back = reverse("admin:predictions_prediction_review")
        return HttpResponseRedirect(back)

    # --- overview page -------------------------------------------------------------------------
    def get_urls(self):
        view = self.admin_site.admin_view
        custom = [
            path("overview/", view(self.overview_view), name="predictions_prediction_overview"),
            path("review/", view(self.review_queue_view), name="predictions_prediction_review"),
            path("review/<int:pk>/", view(self.review_decide_view), name="predictions_prediction_review_decide"),
        ]
        return custom + super().get_urls()

    def overview_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        figures = overview_figures(days=30)
        context = {
            **self.admin_site.each_context(request),
            "title": "Predictions overview",
            "opts": self.model._meta,
            "figures": figures,
            "per_day_chart": stacked_columns_svg(figures["per_day"], series=PredictionStatus.values),
            # Each status in its colour on the per-day chart, so that one legend reads for both.
            "per_status_chart": bars_svg(
                figures["per_status"], colours=[PALETTE[i % len(PALETTE)] for i in range(len(figures["per_status"]))]
            ),
            "label_charts": [(model, bars_svg(items[:28])) for model, items in figures["labels"]],
            "error_rate": "—" if figures["error_rate"] is None else f"{figures['error_rate']:.2%}",
            "latency_mean": "—" if figures["latency_mean"] is None else f"{figures['latency_mean']:.3f} s",
            "latency_p95": "—" if figures["latency_p95"] is None else f"{figures['latency_p95']:.3f} s",
            "quality": [self._quality_context(model_quality(name)) for name in model_names()],
        }
        return TemplateResponse(request, "admin/predictions/overview.html", context)

    @staticmethod
    def _quality_context(quality: dict) -> dict:
        """One model's quality figures, with their charts drawn and their rates written out."""

        def percent(value: float | None) -> str:
            return "—" if value is None else f"{value:.1%}"

        versions = []
        for figures in quality["versions"]:
            low_high = figures["sample_interval"]
            labels = quality["labels"]
            versions.append(
                {
                    **figures,
                    "sample_text": percent(figures["sample_agreement"])
                    + (f" ({low_high[0]:.1%}–{low_high[1]:.1%})" if low_high else ""),
                    "all_text": percent(figures["all_agreement"]),
                    "confusion_rows": [
                        (truth, [figures["confusion"].get((answer, truth), 0) for answer in labels]) for truth in labels
                    ]
                    if len(labels) <= 12
                    else [],
                    "reliability_chart": reliability_svg(figures["reliability"]),
                }
            )
        shares, training = quality.get("recent_shares", {}), quality.get("training_shares")
        order = sorted(set(shares) | set(training or {}), key=lambda label: -(training or shares).get(label, 0))
        return {
            **quality,
            "versions": versions,
            "drift_text": "—" if quality.get("drift") is None else f"{quality['drift']:.3f}",
            "confidence_chart": bars_svg(quality.get("confidence_histogram", [])),
            "drift_chart": paired_bars_svg(
                [
                    (label, shares.get(label, 0.0), (training or {}).get(label) if training else None)
                    for label in order[:28]
                ],
                names=("recent traffic", "training data"),
            ),
        }

    def changelist_view(self, request, extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "overview_url": reverse("admin:predictions_prediction_overview"),
            "review_url": reverse("admin:predictions_prediction_review"),
        }
        return super().changelist_view(request, extra_context)


class ReadOnlyAdmin(admin.ModelAdmin):
    """History and audit records: visible, never edited; deleted by superusers only."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return request.user.is_superuser


@admin.register(PredictionResult)
class PredictionResultAdmin(ReadOnlyAdmin):
    list_display = ("id", "prediction", "model_name", "model_version", "status", "label", "score", "archived_at", "run")
    list_filter = ("model_name", "status")
    list_select_related = ("prediction", "run")
    raw_id_fields = ("prediction", "run")
    search_fields = ("=prediction__id",)
    show_full_result_count = False


@admin.register(PredictionReview)
class PredictionReviewAdmin(ReadOnlyAdmin):
    list_display = ("id", "prediction", "reviewer", "corrected_label", "note", "created_at")
    list_select_related = ("prediction", "reviewer")
    raw_id_fields = ("prediction", "reviewer")
    show_full_result_count = False


@admin.register(ReprocessRun)
class ReprocessRunAdmin(ReadOnlyAdmin):
    list_display = ("id", "source", "created_by", "to_model", "selected", "status", "sync", "created_at", "finished_at")
    list_select_related = ("created_by",)
    readonly_fields = ("summary",)

    @admin.display(description="summary")
    def summary(self, obj: ReprocessRun):
        return mark_safe("<br>".join(f"{k}: {v}" for k, v in reprocess_summary(obj).items()))


@admin.register(Batch)
class BatchAdmin(ReadOnlyAdmin):
    list_display = ("id", "model_name", "size", "owner", "created_at")
    list_select_related = ("owner",)
    raw_id_fields = ("owner",)
    show_full_result_count = False
    fields = ("owner", "model_name", "size", "created_at", "status_counts", "timings", "predictions_table")
    readonly_fields = fields
    PREDICTIONS_SHOWN = 100

    @staticmethod
    def _figures(obj: Batch) -> dict:
        """Read once for the page's two fields that show them."""
        if not hasattr(obj, "_figures"):
            obj._figures = batch_figures(obj)  # type: ignore[attr-defined]  # a per-request memo on the instance
        return obj._figures  # type: ignore[attr-defined]

    @admin.display(description="by status")
    def status_counts(self, obj: Batch):
        figures = self._figures(obj)
        url = reverse("admin:predictions_prediction_changelist")
        return format_html_join(
            " · ",
            '<a href="{}?batch__exact={}&status__exact={}">{}: {}</a>',
            ((url, obj.pk, status, status, n) for status, n in figures["per_status"]),
        )

    @admin.display(description="timings")
    def timings(self, obj: Batch) -> str:
        figures = self._figures(obj)
        if figures["finished"] == 0:
            return "Nothing finished yet."
        seconds = "{:.2f} s".format
        parts = [
            f"first started {seconds(figures['first_start'])} after submission"
            if figures["first_start"] is not None
            else "",
            f"last finished {seconds(figures['last_finish'])} after submission",
            f"{figures['finished']} finished, {figures['per_second']:.1f} texts/s" if figures["per_second"] else "",
            f"per text: p50 {seconds(figures['p50'])}, p95 {seconds(figures['p95'])}",
        ]
        return "; ".join(part for part in parts if part)

    @admin.display(description="predictions")
    def predictions_table(self, obj: Batch):
        rows = list(
            obj.predictions.order_by("position").only(
                "pk", "position", "text", "status", "label", "score", "corrected_label", "cached", "batch_id"
            )[: self.PREDICTIONS_SHOWN]
        )
        change = "admin:predictions_prediction_change"
        more = (
            format_html(
                '<p><a href="{}?batch__exact={}">All {} in the prediction list</a></p>',
                reverse("admin:predictions_prediction_changelist"),
                obj.pk,
                obj.size,
            )
            if obj.size > len(rows)
            else ""
        )
        return format_html(
            '<table class="batch-predictions"><thead><tr><th>#</th><th>id</th><th>text</th><th>status</th>'
            "<th>label</th><th>score</th><th>corrected</th></tr></thead><tbody>{}</tbody></table>{}",
            format_html_join(
                "",
                '<tr><td>{}</td><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
                (
                    (
                        row.position,
                        reverse(change, args=[row.pk]),
                        row.pk,
                        row.text if len(row.text) <= 80 else row.text[:79] + "…",
                        f"{row.status} (cache)" if row.cached else row.status,
                        row.label or "—",
                        "" if row.score is None else f"{row.score:.3f}",
                        row.corrected_label,
                    )
                    for row in rows
                ),
            ),
            more,
        )


def _disagreements_table(summary: str, css_class: str, answers: list[str], rows: Iterable[tuple]) -> str:
    """`summary`, then a table of predictions (link, text) with one column per answer compared."""
    head = format_html_join("", "<th>{}</th>", ((name,) for name in ["prediction", "text", *answers]))
    body = format_html_join(
        "",
        "<tr>{}</tr>",
        (
            (
                format_html(
                    '<td><a href="{}">{}</a></td><td>{}</td>{}',
                    reverse("admin:predictions_prediction_change", args=[pk]),
                    pk,
                    text[:120],
                    format_html_join("", "<td>{}</td>", ((value,) for value in values)),
                ),
            )
            for pk, text, *values in rows
        ),
    )
    return format_html(
        '{}<table class="{}"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>', summary, css_class, head, body
    )


@admin.register(ModelVersion)
class ModelVersionAdmin(ReadOnlyAdmin):
    """Every served, candidate and retired version; the `model managers` group promotes and rolls back.

    Each promotion and rollback is stamped on the rows (who, when) and written to the admin's log.
    """

    list_display = (
        "name",
        "version_short",
        "state",
        "shadow",
        "metrics_summary",
        "registered_by",
        "registered_at",
        "promoted_by",
        "promoted_at",
    )
    list_filter = ("name", "state")
    list_select_related = ("registered_by", "promoted_by")
    actions = ("promote", "rollback", "rerun_history", "compare_on_reviews", "shadow_on", "shadow_off")
    fieldsets = (
        (None, {"fields": ["name", "version", "state", "shadow", "source"]}),
        ("Beside the active version", {"fields": ["metrics_beside_active", "review_comparison", "shadow_comparison"]}),
        (
            "Record",
            {
                "fields": [
                    "metrics",
                    "note",
                    "registered_by",
                    "registered_at",
                    "promoted_by",
                    "promoted_at",
                    "retired_at",
                    "replaced",
                ]
            },
        ),
    )
    # Every field shown is read-only: versions change through the actions, each recorded.
    readonly_fields = tuple(field for _, options in fieldsets for field in cast(list[str], options["fields"]))

    @admin.display(description="metrics beside the active version")
    def metrics_beside_active(self, obj: ModelVersion):
        active = ModelVersion.objects.filter(name=obj.name, state=ModelVersionState.ACTIVE).first()
        names = sorted(set(obj.metrics or {}) | set((active.metrics if active else None) or {}))
        if not names:
            return "No metrics recorded."
        cell = lambda v: "—" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))  # noqa: E731
        return format_html(
            '<table class="metrics-beside"><thead><tr><th></th><th>this version</th><th>{}</th></tr></thead>'
            "<tbody>{}</tbody></table>",
            f"active: {active.version[:12]}" if active else "active: the configured model (no metrics)",
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                (
                    (
                        name,
                        cell((obj.metrics or {}).get(name)),
                        cell(((active.metrics if active else None) or {}).get(name)),
                    )
                    for name in names
                ),
            ),
        )

    @admin.display(description="on reviewed predictions")
    def review_comparison(self, obj: ModelVersion):
        figures = reviewed_agreement(obj)
        if not figures["answered"]:
            queued = f" ({figures['queued']} queued)" if figures["queued"] else ""
            return f"Not compared on reviewed predictions yet{queued}."
        n = figures["answered"]

        def rate(k: int) -> str:
            low, high = wilson_interval(k, n) or (0.0, 0.0)
            return f"{k / n:.1%} ({low:.1%}–{high:.1%})"

        summary = format_html(
            "<p class=\"review-agreement\">On {} reviewed predictions, the reviewers' label is this version's "
            "in <strong>{}</strong>, and the answer clients got in <strong>{}</strong> (95 % intervals; the "
            "review queue shows uncertain answers first, so these rates are lower than on all traffic). "
            "{} queued.</p>",
            n,
            rate(figures["candidate_right"]),
            rate(figures["served_right"]),
            figures["queued"],
        )
        return _disagreements_table(
            summary,
            "review-disagreements",
            ["reviewers", "clients got", "this version"],
            ((pk, text, truth, served, mine) for pk, text, truth, served, mine in figures["disagreements"]),
        )

    @admin.action(description="Compare the selected version on reviewed predictions", permissions=["promote"])
    def compare_on_reviews(self, request, queryset):
        version = self._one(request, queryset)
        if version is None:
            return
        queued = shadow_compare_on_reviews(version)
        self.log_change(request, version, f"Queued for comparison on {queued} reviewed predictions.")
        self.message_user(
            request,
            f"{version} will answer {queued} reviewed predictions on the shadow workers; its page compares them "
            "with the reviewers' labels.",
            messages.SUCCESS,
        )

    @admin.display(description="live comparison (shadow)")
    def shadow_comparison(self, obj: ModelVersion):
        figures = shadow_agreement(obj)
        if not figures["answered"]:
            queued = f" ({figures['queued']} queued)" if figures["queued"] else ""
            return f"No shadow answers yet{queued}." if obj.shadow else "Not shadowed."
        interval = wilson_interval(figures["agreeing"], figures["answered"])
        low, high = interval if interval else (0.0, 0.0)
        summary = format_html(
            '<p class="shadow-agreement">{} of {} live texts answered alike: <strong>{}</strong> '
            "(95 % interval {}–{}); {} queued.</p>",
            figures["agreeing"],
            figures["answered"],
            f"{figures['agreeing'] / figures['answered']:.1%}",
            f"{low:.1%}",
            f"{high:.1%}",
            figures["queued"],
        )
        return _disagreements_table(
            summary,
            "shadow-disagreements",
            ["answered (version)", "this version"],
            (
                (pk, text, f"{label} ({served[:8]})", shadow)
                for pk, text, label, served, shadow in figures["disagreements"]
            ),
        )

    @admin.action(description="Shadow the selected version on live traffic (SHADOW_RATE)", permissions=["promote"])
    def shadow_on(self, request, queryset):
        version = self._one(request, queryset)
        if version is None:
            return
        try:
            previous = shadow_start(version)
        except VersionRefused as exc:
            self.message_user(request, f"Not shadowed: {exc}.", messages.ERROR)
            return
        self.log_change(request, version, "Shadowed on live traffic.")
        stopped = f"; {previous} is no longer shadowed" if previous else ""
        self.message_user(
            request,
            f"{version} answers {settings.SHADOW_RATE:.0%} of the live texts its model answers, on the "
            f"shadow workers; its answers are never returned{stopped}.",
            messages.SUCCESS,
        )

    @admin.action(description="Stop shadowing the selected version", permissions=["promote"])
    def shadow_off(self, request, queryset):
        version = self._one(request, queryset)
        if version is None:
            return
        dropped = shadow_stop(version)
        self.log_change(request, version, "No longer shadowed.")
        self.message_user(request, f"{version} is no longer shadowed ({dropped} queued answers dropped).")

    def has_promote_permission(self, request) -> bool:
        return request.user.has_perm("predictions.promote_modelversion")

    @admin.display(description="version", ordering="version")
    def version_short(self, obj: ModelVersion) -> str:
        return obj.version[:12]

    @admin.display(description="metrics")
    def metrics_summary(self, obj: ModelVersion) -> str:
        return (
            ", ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                for k, v in sorted((obj.metrics or {}).items())[:4]
            )
            or "—"
        )

    def _one(self, request, queryset) -> ModelVersion | None:
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one version.", messages.ERROR)
            return None
        return queryset.get()

    @admin.action(
        description="Promote the selected version (serve it; the active one is retired)", permissions=["promote"]
    )
    def promote(self, request, queryset):
        version = self._one(request, queryset)
        if version is None:
            return
        try:
            previous = model_version_promote(version, user=request.user)
        except VersionRefused as exc:
            self.message_user(request, f"Not promoted: {exc}.", messages.ERROR)
            return
        replaced = f"; {previous} retired" if previous else ""
        self.log_change(request, version, f"Promoted to active{replaced}.")
        if previous is not None:
            self.log_change(request, previous, f"Retired: {version} promoted.")
        self.message_user(
            request,
            f"{version.name}@{version.version[:12]} is active{replaced}. Workers take it up within "
            f"{settings.MODEL_VERSION_CHECK_SECONDS} s. To re-run the predictions earlier versions answered, "
            "select it and run “Re-run history under the selected active version”.",
            messages.SUCCESS,
        )

    @admin.action(
        description="Roll back the selected active version (serve the one it replaced)", permissions=["promote"]
    )
    def rollback(self, request, queryset):
        version = self._one(request, queryset)
        if version is None:
            return
        if version.state != ModelVersionState.ACTIVE:
            self.message_user(request, f"Not rolled back: {version} is not active.", messages.ERROR)
            return
        retired, back = model_version_rollback(version.name, user=request.user)
        serving = str(back) if back else f"the configured {settings.MLSITE_MODELS.get(version.name, '?')}"
        self.log_change(request, retired, f"Rolled back: {serving} served again.")
        if back is not None:
            self.log_change(request, back, f"Active again: {retired} rolled back.")
        self.message_user(request, f"Rolled back {retired.name}: serving {serving}.", messages.SUCCESS)

    @admin.action(
        description="Re-run history under the selected active version (earlier results kept)", permissions=["promote"]
    )
    def rerun_history(self, request, queryset):
        version = self._one(request, queryset)
        if version is None:
            return
        if version.state != ModelVersionState.ACTIVE:
            self.message_user(request, f"Not re-run: {version} is not the active version.", messages.ERROR)
            return
        history = Prediction.objects.filter(model_name=version.name, status__in=FINISHED_STATUSES).exclude(
            model_version=version.version
        )
        run, queued = predictions_rerun(queryset=history, user=request.user)
        self.log_change(request, version, f"Re-ran {queued} earlier prediction(s) under it (run {run.pk}).")
        self.message_user(
            request, f"Queued {queued} prediction(s) answered by earlier versions (run {run.pk}).", messages.SUCCESS
        )
