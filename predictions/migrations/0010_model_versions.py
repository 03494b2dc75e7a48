"""Model versions as rows, and the `model managers` group that promotes and rolls them back."""

from django.conf import settings
from django.contrib.auth.management import create_permissions
from django.db import migrations, models

MANAGER_PERMISSIONS = [
    ("predictions", "view_modelversion"),
    ("predictions", "add_modelversion"),
    ("predictions", "change_modelversion"),
    ("predictions", "promote_modelversion"),
    ("predictions", "view_prediction"),
    ("predictions", "view_predictionresult"),
    ("predictions", "view_reprocessrun"),
]


def groups_update(apps, schema_editor):
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    managers, _ = Group.objects.get_or_create(name="model managers")
    for app_label, codename in MANAGER_PERMISSIONS:
        permission = Permission.objects.filter(content_type__app_label=app_label, codename=codename).first()
        if permission is not None:
            managers.permissions.add(permission)
    view = Permission.objects.filter(content_type__app_label="predictions", codename="view_modelversion").first()
    reviewers = Group.objects.filter(name="reviewers").first()
    if reviewers is not None and view is not None:
        reviewers.permissions.add(view)  # reviewers see the versions, never promote them


def groups_revert(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name="model managers").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("predictions", "0009_review_queue"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="ModelVersion",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(help_text="Registry name of the model (a key of MLSITE_MODELS).", max_length=100)),
                ("version", models.CharField(help_text="The artifact's version: a hash of its weights.", max_length=64)),
                ("source", models.CharField(help_text="Where the artifact lies: bundled:NAME, a local directory, or a hub id.", max_length=500)),
                ("state", models.CharField(choices=[("active", "Active"), ("candidate", "Candidate"), ("retired", "Retired")], default="candidate", max_length=16)),
                ("metrics", models.JSONField(blank=True, help_text="Evaluation figures, e.g. dev accuracy, by name.", null=True)),
                ("note", models.TextField(blank=True, help_text="How it was made (data, recipe) or why it was registered.")),
                ("registered_at", models.DateTimeField(auto_now_add=True)),
                ("promoted_at", models.DateTimeField(blank=True, help_text="When it was last made active.", null=True)),
                ("retired_at", models.DateTimeField(blank=True, help_text="When it last stopped being active.", null=True)),
                ("replaced", models.ForeignKey(blank=True, help_text="The version active when this one was first promoted: what a rollback serves again.", null=True, on_delete=models.deletion.PROTECT, related_name="+", to="predictions.modelversion")),
                ("promoted_by", models.ForeignKey(blank=True, help_text="Who last made it active.", null=True, on_delete=models.deletion.PROTECT, related_name="+", to=settings.AUTH_USER_MODEL)),
                ("registered_by", models.ForeignKey(blank=True, help_text="Who registered it (blank: a command run without --user).", null=True, on_delete=models.deletion.PROTECT, related_name="+", to=settings.AUTH_USER_MODEL)),
            ],
            options={
                "ordering": ["name", "-registered_at"],
                "permissions": [("promote_modelversion", "Can promote and roll back model versions")],
                "constraints": [
                    models.UniqueConstraint(fields=("name", "version"), name="model_version_once"),
                    models.UniqueConstraint(condition=models.Q(("state", "active")), fields=("name",), name="model_version_one_active_per_name"),
                ],
            },
        ),
        migrations.RunPython(groups_update, groups_revert),
    ]
