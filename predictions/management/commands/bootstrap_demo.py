"""First-run setup for `make run`: a demo superuser and API token, printed so one can start at once."""

from __future__ import annotations

import json
import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Create the demo superuser and token once; print the admin URL, username, password and token."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")

    def handle(self, *args, username: str, base_url: str, **options) -> None:
        credentials_file = settings.VAR_DIR / "demo-credentials.json"
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        password = None
        if user is None:
            password = secrets.token_urlsafe(12)
            user = User.objects.create_superuser(username=username, email="", password=password)
            credentials_file.write_text(json.dumps({"username": username, "password": password}))
            os.chmod(credentials_file, 0o600)
        elif credentials_file.is_file():
            saved = json.loads(credentials_file.read_text())
            if saved.get("username") == username:
                password = saved.get("password")
        token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(
            "\n".join(
                [
                    "",
                    f"  admin:    {base_url}/admin/",
                    f"  username: {username}",
                    f"  password: {password or '(set before this run; change it with: python manage.py changepassword ' + username + ')'}",
                    f"  token:    {token.key}",
                    f"  for the README's curl examples:  export TOKEN={token.key}",
                    f"  API docs: {base_url}/api/docs/",
                    f'  try:      curl -s -H "Authorization: Token {token.key}" -H "Content-Type: application/json" '
                    f"-d '{{\"text\": \"a gorgeous, witty film\"}}' '{base_url}/api/v1/predictions/?wait=10'",
                    "",
                ]
            )
        )
