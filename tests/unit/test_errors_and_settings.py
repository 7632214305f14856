from __future__ import annotations

import pytest

from shared import errors
from shared.errors import ErrorBody, error_from_body
from shared.settings import Settings, env_names


@pytest.mark.parametrize("cls", [errors.InvalidRequest, errors.Unauthorized, errors.Forbidden, errors.NotFound,
                                 errors.Conflict, errors.PayloadTooLarge, errors.Unavailable,
                                 errors.UpstreamTimeout])
def test_every_error_is_4xx_or_5xx_and_round_trips_by_code(cls):
    exc = cls("something specific")
    assert 400 <= exc.status < 600 and exc.code
    again = error_from_body(exc.body(), exc.status)
    assert type(again) is cls and again.msg == "something specific"


def test_unknown_code_keeps_the_code_and_maps_by_status():
    again = error_from_body(ErrorBody(code="model_not_ready", msg="wait"), 503)
    assert isinstance(again, errors.Unavailable) and again.code == "model_not_ready"


def test_settings_read_nested_env(monkeypatch):
    monkeypatch.setenv("RAILYARD_NATS__URL", "nats://10.0.0.1:4222")
    monkeypatch.setenv("RAILYARD_GATEWAY__PORT", "9999")
    monkeypatch.setenv("RAILYARD_STACK__DATA_DIR", "/srv/railyard")
    settings = Settings()
    assert settings.nats.url == "nats://10.0.0.1:4222"
    assert settings.gateway.port == 9999
    assert str(settings.stack.data_dir) == "/srv/railyard"


def test_secrets_have_no_defaults():
    settings = Settings()
    assert settings.s3.access_key == "" and settings.s3.secret_key == ""
    assert ":" not in settings.postgres.dsn.split("@")[0].removeprefix("postgresql://")


def test_env_names_lists_nested_settings():
    names = env_names()
    assert {"RAILYARD_NATS__URL", "RAILYARD_POSTGRES__DSN", "RAILYARD_S3__SECRET_KEY", "RAILYARD_ENV",
            "RAILYARD_STACK__NATS_PORT", "RAILYARD_GATEWAY__PORT"} <= names


def test_a_consumer_backoff_above_its_max_is_refused(monkeypatch):
    """The redelivery delays are min(backoff * 2**n, backoff_max): a first delay above the longest was cut to it
    silently; the settings now say which two variables disagree."""
    monkeypatch.setenv("RAILYARD_NATS__CONSUMER_BACKOFF", "600")
    with pytest.raises(ValueError, match=r"CONSUMER_BACKOFF \(600 s\) is above RAILYARD_NATS__CONSUMER_BACKOFF_MAX "
                       r"\(300 s\)"):
        Settings()
    monkeypatch.setenv("RAILYARD_NATS__CONSUMER_BACKOFF_MAX", "600")
    assert Settings().nats.consumer_backoff == 600  # equal to the max: one delay, as set
