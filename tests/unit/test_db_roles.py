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


def test_compose_gives_each_service_its_own_role_and_the_superuser_to_the_bootstrap_only():
    import yaml

    compose = yaml.safe_load((SERVICES.parent / "docker-compose.yml").read_text())["services"]
    for name in subjects.SERVICES:
        env = compose[name.replace("_", "-")]["environment"]
        dsn = env.get("RAILYARD_POSTGRES__DSN")
        if name in DATABASE_SCHEMAS:
            assert dsn and dsn.startswith(f"postgresql://{service_role(name)}:"), name
        else:
            assert dsn is None, f"{name} keeps no tables but gets a database DSN"
        assert "RAILYARD_POSTGRES_PASSWORD" not in str(env), f"{name} gets the superuser's password"
        assert "db-roles" in compose[name.replace("_", "-")]["depends_on"]
    bootstrap = compose["db-roles"]
    assert bootstrap["command"][-1] == "shared.db_roles"
    assert {f"RAILYARD_DB_PASSWORD__{s.upper()}" for s in DATABASE_SCHEMAS} <= set(bootstrap["environment"])
