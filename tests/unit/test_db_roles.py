from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from shared import subjects
from shared.db_roles import DATABASE_SCHEMAS, role_dsn, service_role

SERVICES = Path(__file__).resolve().parents[2] / "services"


def test_every_service_with_tables_has_a_role_and_no_other_does():
    with_migrations = {name for name in subjects.SERVICES if (SERVICES / name / "migrations").is_dir()}
    assert set(DATABASE_SCHEMAS) == with_migrations


def test_role_dsn_keeps_server_and_database_and_swaps_the_credentials():
    dsn = role_dsn("postgresql://railyard:super@db.example:5433/railyard?sslmode=require", "log_store", "p@ss/w:rd")
    parts = urlsplit(dsn)
    assert (parts.hostname, parts.port, parts.path, parts.query) == ("db.example", 5433, "/railyard",
                                                                      "sslmode=require")
    assert parts.username == service_role("log_store") == "railyard_log_store"
    assert "super" not in dsn and parts.password == "p%40ss%2Fw%3Ard"
