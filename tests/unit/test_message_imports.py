"""shared/messages: a message model's validator is built at its first use, not at import (defer_build on Message),
and every model still builds (each case in a fresh interpreter: a model built once stays built)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

ALL_MODELS = """
    import importlib, pkgutil
    import shared.messages
    from shared.messages.base import Message
    for module in pkgutil.iter_modules(shared.messages.__path__):
        importlib.import_module(f"shared.messages.{module.name}")

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    models = sorted(set(subclasses(Message)), key=lambda cls: (cls.__module__, cls.__qualname__))
"""


def run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(ALL_MODELS) + textwrap.dedent(code)], cwd=REPO,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_the_messages_builds_no_model_until_its_first_use():
    out = run("""
        from shared.messages import CheckHealth, HealthReport
        built = [cls.__qualname__ for cls in models if cls.__pydantic_complete__]
        HealthReport.model_validate_json(
            '{"name": "auth", "status": "ok", "version": "1", "pid": 1, "uptime_s": 0.5, "dependencies": []}')
        print(len(models) > 200, built, HealthReport.__pydantic_complete__, CheckHealth.__pydantic_complete__)
    """)
    assert out == "True [] True False"


def test_every_message_model_builds_and_validates_as_declared():
    """A model that cannot be built (a forward reference that does not resolve) fails here, as it failed at import
    before its build was deferred; and a deferred model still refuses unknown fields (extra="forbid")."""
    out = run("""
        import pydantic
        for cls in models:
            cls.model_rebuild(raise_errors=True)
            assert cls.__pydantic_complete__, cls
            cls.model_json_schema()
        from shared.messages import CheckHealth
        try:
            CheckHealth.model_validate({"x": 1})
        except pydantic.ValidationError as exc:
            print(len(models) > 200, exc.errors()[0]["type"])
    """)
    assert out == "True extra_forbidden"
