"""assay_runner: transport only. Subscribers parse their typed message and call one handler."""

from __future__ import annotations

from pathlib import Path

from faststream.nats import NatsRouter

from shared.service import Runtime, ServiceSpec

NAME = "assay_runner"


def build_router(runtime: Runtime) -> NatsRouter:
    """The service's command and event subscribers (health is added by the runner)."""
    return NatsRouter()


SPEC = ServiceSpec(
    name=NAME,
    build_router=build_router,
    migrations=Path(__file__).parent / "migrations",
    uses_object_store=True,
)
