"""The `reviewers` group: may view predictions and their history, and set a correction and a note."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

REVIEWER_PERMISSIONS = [
    ("predictions", "view_prediction"),
    ("predictions", "change_prediction"),
    ("predictions", "view_batch"),
    ("predictions", "view_predictionresult"),
    ("predictions", "view_predictionreview"),
    ("predictions", "view_reprocessrun"),
    ("django_celery_results", "view_taskresult"),
]


def reviewers_create(apps, schema_editor):
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name="reviewers")
    for app_label, codename in REVIEWER_PERMISSIONS:
        permission = Permission.objects.filter(content_type__app_label=app_label, codename=codename).first()
        if permission is not None:
            group.permissions.add(permission)


def reviewers_delete(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name="reviewers").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("predictions", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("django_celery_results", "0011_taskresult_periodic_task_name"),
    ]

    operations = [migrations.RunPython(reviewers_create, reviewers_delete)]
