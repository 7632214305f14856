"""`railyard dead-letters` takes what the environment does not set of the database and the bus from the embedded
stack's data directory (shared.dead_letters.with_stack_credentials), as `railyard login` and `status` find theirs:
PostgreSQL's superuser from secrets.json, the bus's `ops` identity, the ports of the running stack (run/stack.json).
What the environment sets wins; a directory without secrets changes nothing."""

from __future__ import annotations

import json

from shared.dead_letters import with_stack_credentials
from shared.settings import Settings, StackSettings

SECRETS = {"postgres_password": "pg-secret", "nats_password_ops": "ops-secret", "nats_password_auth": "no"}


def stack_dir(tmp_path, state: bool = True):
    (tmp_path / "secrets.json").write_text(json.dumps(SECRETS))
    if state:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "stack.json").write_text(json.dumps({"ports": {"nats": 24222, "postgres": 25432}}))
    return Settings(stack=StackSettings(data_dir=tmp_path))


def test_nothing_set_takes_the_superuser_and_ops_at_the_running_stack_s_ports(tmp_path):
    settings = with_stack_credentials(stack_dir(tmp_path), {})
    assert settings.postgres.dsn == "postgresql://railyard:pg-secret@127.0.0.1:25432/railyard"
    assert (settings.nats.url, settings.nats.user, settings.nats.password) == (
        "nats://127.0.0.1:24222", "ops", "ops-secret")


def test_without_a_state_file_the_settings_ports(tmp_path):
    settings = with_stack_credentials(stack_dir(tmp_path, state=False), {})
    assert settings.postgres.dsn == "postgresql://railyard:pg-secret@127.0.0.1:15432/railyard"
    assert settings.nats.url == "nats://127.0.0.1:14222"


def test_what_the_environment_sets_wins(tmp_path):
    base = stack_dir(tmp_path)
    settings = with_stack_credentials(base, {"RAILYARD_POSTGRES__DSN": "postgresql://x@h/d"})
    assert settings.postgres == base.postgres and settings.nats.user == "ops"
    settings = with_stack_credentials(base, {"railyard_nats__url": "nats://elsewhere:4222"})
    assert settings.nats == base.nats and "pg-secret" in settings.postgres.dsn


def test_a_data_directory_without_secrets_changes_nothing(tmp_path):
    base = Settings(stack=StackSettings(data_dir=tmp_path))
    assert with_stack_credentials(base, {}) == base
