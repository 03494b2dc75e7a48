"""The migrations describe the models exactly (no model change lands without its migration)."""

import io

import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_no_model_change_is_missing_a_migration():
    out = io.StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


@pytest.mark.django_db
def test_indexes_on_the_predictions_table_are_built_without_locking_its_writes():
    """A big table takes minutes to index: submissions and workers keep writing meanwhile."""
    from django.db import connection  # noqa: PLC0415

    if connection.vendor != "postgresql":
        pytest.skip("CONCURRENTLY is PostgreSQL's; elsewhere the index is a plain one")
    out = io.StringIO()
    call_command("sqlmigrate", "predictions", "0008", stdout=out)
    assert 'CREATE INDEX CONCURRENTLY "prediction_queued_id"' in out.getvalue()
