"""The review desk; issue 5 grows this into the full audit admin."""

from django.contrib import admin

from predictions.models import Batch, Prediction


@admin.register(Prediction)
class PredictionAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "short_text",
        "label",
        "score",
        "model_name",
        "model_version",
        "status",
        "cached",
        "owner",
        "created_at",
    ]
    list_filter = ["status", "model_name", "cached"]
    search_fields = ["=id", "text"]
    list_select_related = ["owner"]
    raw_id_fields = ["owner", "batch"]
    show_full_result_count = False
    readonly_fields = [f.name for f in Prediction._meta.fields]

    @admin.display(description="text")
    def short_text(self, obj: Prediction) -> str:
        return obj.text if len(obj.text) <= 80 else obj.text[:77] + "…"

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
    list_display = ["id", "model_name", "size", "owner", "created_at"]
    list_select_related = ["owner"]
    raw_id_fields = ["owner"]
    readonly_fields = [f.name for f in Batch._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False
