"""The Celery app; task settings live in Django settings under the CELERY_ namespace."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mlsite.settings")

app = Celery("mlsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
