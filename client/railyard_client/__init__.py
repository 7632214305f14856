"""Railyard's Python SDK: `Client` and the objects it hands out (workspaces, models, pipelines, deployments,
assays, connections), typed errors, and `in_task()` / `task_args()` for orchestration task runs.

    import pandas as pd
    from railyard_client import Client
    client = Client()                      # RAILYARD_CLIENT_* variables, a task run, or `railyard login`
    version = client.upload_model("ccfraud", "ccfraud.onnx")   # the README makes this file
    pipeline = client.build_pipeline("fraud").add_model_step(version).deploy()
    pipeline.infer(pd.DataFrame({"tensor": [[0.1] * 29]}))     # DataFrame in, DataFrame out
    pipeline.logs(limit=100)               # the newest 100 logged, a DataFrame: a row is readable ~1 s
                                           # after its answer (at once, this one may not be there yet)
"""

from __future__ import annotations

from pathlib import Path

from railyard_client.assays import Assay
from railyard_client.client import Client
from railyard_client.connections import Connection
from railyard_client.errors import (
    APIError,
    AuthenticationError,
    ConfigurationError,
    Conflict,
    ConnectionFailed,
    ConversionFailed,
    DeploymentFailed,
    InvalidRequest,
    NotAcceptable,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RailyardError,
    Unavailable,
    WaitTimeout,
)
from railyard_client.lineage import Lineage
from railyard_client.models import Model, ModelVersion, Registry
from railyard_client.monitoring_feedback import ServiceMetrics
from railyard_client.monitoring_predictions import SupportedContentType
from railyard_client.orchestrations import OrchestrationFailed, Orchestrations
from railyard_client.pipelines import Deployment, Pipeline
from railyard_client.session import TokensNotSaved
from railyard_client.tasks import in_task, task_args
from railyard_client.workspaces import User, Workspace


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("railyard-client")
    except metadata.PackageNotFoundError:  # run from a source tree
        version_file = Path(__file__).resolve().parent.parent / "VERSION"
        return version_file.read_text().strip() if version_file.is_file() else "0+unknown"


def __getattr__(name: str) -> str:
    """`__version__`, read when first asked for: importlib.metadata (with the email package it imports) was
    40-100 ms of every `railyard` command's start, and only `--version` prints it (docs/performance.md item 46)."""
    if name == "__version__":
        version = globals()["__version__"] = _version()
        return version
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "APIError", "Assay", "AuthenticationError", "Client", "ConfigurationError", "Conflict", "Connection",
    "ConnectionFailed", "ConversionFailed", "Deployment", "DeploymentFailed", "InvalidRequest", "Lineage", "Model",
    "ModelVersion", "NotAcceptable", "NotFound", "OrchestrationFailed", "Orchestrations", "PayloadTooLarge",
    "PermissionDenied", "Pipeline", "RailyardError", "Registry", "ServiceMetrics", "SupportedContentType",
    "TokensNotSaved", "Unavailable", "User", "WaitTimeout", "Workspace", "__version__", "in_task", "task_args",
]
