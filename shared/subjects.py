"""Every NATS subject and JetStream stream name, in one place.

Commands: `<service>.<resource>.<verb>` (request/reply, one queue group per service).
Events: `events.<resource>.<past-tense-verb>` on the EVENTS stream.
"""

from __future__ import annotations

SERVICES: tuple[str, ...] = (
    "gateway",
    "auth",
    "registry",
    "deployer",
    "engine",
    "log_store",
    "assay_runner",
    "workflow_lineage",
    "task_scheduler",
    "monitoring",
)


def covers(pattern: str, subject: str) -> bool:
    """Does the NATS subject pattern `pattern` (`*` one token, a last `>` one or more) take `subject`, itself maybe
    with wildcards (as a subscription's may be: then only a pattern at least as wide takes it)? Used by
    `railyard dead-letters replay` (does the durable's filter still take the row's subject) and by the bus
    permissions' tests (does an identity's allow/deny rule cover a subject)."""
    wanted, have = subject.split("."), pattern.split(".")
    for i, token in enumerate(have):
        if token == ">":
            return len(wanted) > i
        if i >= len(wanted):
            return False
        if wanted[i] == ">":
            return False  # the subject asks for more than one token here; only `>` grants that
        if token != "*" and (token != wanted[i] or wanted[i] == "*"):
            return False
    return len(wanted) == len(have)


def health(service: str) -> str:
    """The health subject of a service, e.g. `registry.health`."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}")
    return f"{service}.health"


def queue_group(service: str) -> str:
    """The queue group a service's replicas share."""
    return f"railyard-{service}"


# JetStream streams: name -> subjects it captures.
EVENTS_STREAM = "EVENTS"
EVENTS_SUBJECTS = ("events.>",)
INFERENCE_LOGS_STREAM = "INFERENCE_LOGS"
INFERENCE_LOGS_SUBJECTS = ("logs.inference.>",)
INFERENCE_LOGS_DURABLE = "log-store"
STREAMS: dict[str, tuple[str, ...]] = {
    EVENTS_STREAM: EVENTS_SUBJECTS,
    INFERENCE_LOGS_STREAM: INFERENCE_LOGS_SUBJECTS,
}

# Events
EVENT_SERVICE_STARTED = "events.service.started"

# workflow_lineage
LINEAGE_EVENTS_DURABLE = "workflow-lineage-events"
LINEAGE_EVENTS_COUNT = "workflow_lineage.events.count"
LINEAGE_PROJECTS_CREATE = "workflow_lineage.projects.create"
LINEAGE_PROJECTS_LIST = "workflow_lineage.projects.list"
LINEAGE_PROJECTS_GET = "workflow_lineage.projects.get"
LINEAGE_PROJECTS_DELETE = "workflow_lineage.projects.delete"
LINEAGE_DATASETS_CREATE = "workflow_lineage.datasets.create"
LINEAGE_DATASETS_LIST = "workflow_lineage.datasets.list"
LINEAGE_DATASETS_GET = "workflow_lineage.datasets.get"
LINEAGE_DATASETS_DELETE = "workflow_lineage.datasets.delete"
LINEAGE_DATASETS_PUT_ROWS = "workflow_lineage.datasets.put_rows"
LINEAGE_DATASETS_ROWS = "workflow_lineage.datasets.rows"
LINEAGE_DATASETS_ADD_FILE = "workflow_lineage.datasets.add_file"
LINEAGE_DATASETS_LIST_FILES = "workflow_lineage.datasets.list_files"
LINEAGE_DATASETS_GET_FILE = "workflow_lineage.datasets.get_file"
LINEAGE_DATASETS_SAVED = "workflow_lineage.datasets.saved"  # a version holds the dataset (small answer)
LINEAGE_DATASETS_DELETE_FILE = "workflow_lineage.datasets.delete_file"
LINEAGE_FILES_PUT = "workflow_lineage.files.put"
LINEAGE_FILES_LIST = "workflow_lineage.files.list"
LINEAGE_FILES_GET = "workflow_lineage.files.get"
LINEAGE_FILES_DELETE = "workflow_lineage.files.delete"
LINEAGE_VERSIONS_CREATE = "workflow_lineage.versions.create"
LINEAGE_VERSIONS_LIST = "workflow_lineage.versions.list"
LINEAGE_VERSIONS_RESTORE = "workflow_lineage.versions.restore"
LINEAGE_VERSIONS_VERIFY = "workflow_lineage.versions.verify"
LINEAGE_WORKFLOW_GRAPH = "workflow_lineage.workflow.graph"
LINEAGE_BENCHMARKS_CLASSIFICATION = "workflow_lineage.benchmarks.run_classification"
LINEAGE_BENCHMARKS_DETECTION = "workflow_lineage.benchmarks.evaluate_detections"
LINEAGE_BENCHMARKS_GET = "workflow_lineage.benchmarks.get"
LINEAGE_BENCHMARKS_LIST = "workflow_lineage.benchmarks.list"
LINEAGE_BENCHMARKS_COMPARE = "workflow_lineage.benchmarks.compare"
LINEAGE_OBJECTS_COLLECT = "workflow_lineage.objects.collect"
EVENT_BENCHMARK_COMPLETED = "events.benchmark.completed"
# the seed's input/output methods, one subject each: workflow_lineage.workflow.add_input_project, ...
LINEAGE_WORKFLOW_LINKS = tuple(
    f"workflow_lineage.workflow.add_{direction}_{card}"
    for direction, cards in (("input", ("project", "dataset", "file", "folder", "task", "job")),
                             ("output", ("project", "dataset", "file", "folder", "task", "job", "app")))
    for card in cards)
EVENT_PROJECT_CHANGED = "events.project.changed"
EVENT_PROJECT_VERSION_CREATED = "events.project.version_created"
EVENT_WORKFLOW_LINK_ADDED = "events.workflow.link_added"
EVENT_ASSAY_CREATED = "events.assay.created"
# Task runs (orchestrations issue): the lineage service draws them from these events (docs/lineage.md)
EVENT_TASK_RUN_PREFIX = "events.task_run."

# log_store
LOG_STORE_QUERY = "log_store.logs.query"  # raw: JSON GetLogs in, Arrow IPC stream out (Railyard-Page header)
LOG_STORE_READ_FIELD = "log_store.logs.field"  # raw: JSON ReadLogField in, Arrow IPC stream (column `value`) out
LOG_STORE_SET_RETENTION = "log_store.retention.set"
LOG_STORE_MAINTENANCE = "log_store.maintenance.run"
LOG_STORE_QUARANTINE_LIST = "log_store.quarantine.list"
EVENT_LOGS_BATCH_QUARANTINED = "events.logs.batch_quarantined"

# assay_runner
ASSAYS_CREATE = "assay_runner.assays.create"
ASSAYS_LIST = "assay_runner.assays.list"
ASSAYS_SET_ACTIVE = "assay_runner.assays.set_active"
ASSAYS_RUN_BASELINE = "assay_runner.assays.run_interactive_baseline"
ASSAYS_GET_BASELINE = "assay_runner.assays.get_baseline"
ASSAYS_RUN_INTERACTIVE = "assay_runner.assays.run_interactive"
ASSAYS_GET_RESULTS = "assay_runner.assays.get_results"
EVENT_ASSAY_WARNING = "events.assay.warning"
EVENT_ASSAY_ALERT = "events.assay.alert"

# auth
AUTH_TOKEN_ISSUE = "auth.token.issue"
AUTH_TOKEN_LOGOUT = "auth.token.logout"  # the gateway's logout endpoint: a refresh token's session ended
AUTH_AUTHORIZE = "auth.authorize"  # the gateway's authorization endpoint: a user's sign-in -> a one-time code
AUTH_TOKEN_ISSUE_TASK = "auth.token.issue_task"  # task_scheduler only: a run's workspace-scoped token
AUTH_KEYS_GET = "auth.keys.get"
AUTH_KEYS_ROTATE = "auth.keys.rotate"
AUTH_REVOCATIONS_LIST = "auth.revocations.list"
AUTH_USERS_QUERY = "auth.users.query"
AUTH_USERS_INVITE = "auth.users.invite"
AUTH_USERS_DEACTIVATE = "auth.users.deactivate"
AUTH_USERS_ACTIVATE = "auth.users.activate"
AUTH_USERS_UPDATE_PASSWORD = "auth.users.update_password"
AUTH_WORKSPACES_LIST = "auth.workspaces.list"
AUTH_WORKSPACES_CREATE = "auth.workspaces.create"
AUTH_WORKSPACES_ADD_USER = "auth.workspaces.add_user"
AUTH_WORKSPACES_LIST_USERS = "auth.workspaces.list_users"
AUTH_WORKSPACES_REMOVE_USER = "auth.workspaces.remove_user"
AUTH_WORKSPACES_CHECK_MEMBER = "auth.workspaces.check_member"
AUTH_FEATURES_LIST = "auth.features.list"
AUTH_INFERENCE_CLIENTS_CREATE = "auth.inference_clients.create"
AUTH_INFERENCE_CLIENTS_LIST = "auth.inference_clients.list"
AUTH_INFERENCE_CLIENTS_REVOKE = "auth.inference_clients.revoke"
EVENT_SIGNING_KEY_ROTATED = "events.auth.signing_key_rotated"
EVENT_TOKENS_REVOKED = "events.auth.tokens_revoked"
EVENT_USER_CREATED = "events.user.created"
EVENT_USER_DEACTIVATED = "events.user.deactivated"
EVENT_USER_ACTIVATED = "events.user.activated"
EVENT_WORKSPACE_CREATED = "events.workspace.created"
EVENT_WORKSPACE_MEMBERSHIP_CHANGED = "events.workspace.membership_changed"

# registry
REGISTRY_MODELS_UPLOAD = "registry.models.upload"
REGISTRY_MODELS_LIST = "registry.models.list"
REGISTRY_MODELS_GET_BY_ID = "registry.models.get_by_id"
REGISTRY_MODELS_LIST_VERSIONS = "registry.models.list_versions"
REGISTRY_MODELS_GET_CONFIG = "registry.models.get_config"
REGISTRY_MODELS_GET = "registry.models.get"
EVENT_MODEL_UPLOADED = "events.model.uploaded"
EVENT_MODEL_VERSION_FINISHED = "events.model.version_finished"
REGISTRY_CONNECTIONS_CREATE = "registry.connections.create"
REGISTRY_CONNECTIONS_ADD_TO_WORKSPACE = "registry.connections.add_to_workspace"
REGISTRY_CONNECTIONS_LIST = "registry.connections.list"
REGISTRY_CONNECTIONS_GET = "registry.connections.get"
REGISTRY_CONNECTIONS_GET_BY_ID = "registry.connections.get_by_id"
REGISTRY_CONNECTIONS_REMOVE_FROM_WORKSPACE = "registry.connections.remove_from_workspace"
REGISTRY_CONNECTIONS_DELETE = "registry.connections.delete"
EVENT_CONNECTION_CHANGED = "events.connection.changed"
EVENT_REGISTRY_CHANGED = "events.registry.changed"
REGISTRY_REGISTRIES_CREATE = "registry.registries.create"
REGISTRY_REGISTRIES_ATTACH = "registry.registries.attach"
REGISTRY_REGISTRIES_DETACH = "registry.registries.detach"
REGISTRY_REGISTRIES_GET = "registry.registries.get"
REGISTRY_REGISTRIES_LIST = "registry.registries.list"
REGISTRY_REGISTRIES_LIST_MODELS = "registry.registries.list_models"
REGISTRY_REGISTRIES_LIST_ARTIFACTS = "registry.registries.list_artifacts"
REGISTRY_REGISTRIES_UPLOAD = "registry.registries.upload"
REGISTRY_MODELS_RESOLVE = "registry.models.resolve"
REGISTRY_MODELS_EXIST = "registry.models.exist"

# deployer
DEPLOYER_PIPELINES_CREATE = "deployer.pipelines.create"
DEPLOYER_PIPELINES_COPY = "deployer.pipelines.copy"
DEPLOYER_PIPELINES_LIST = "deployer.pipelines.list"
DEPLOYER_PIPELINES_GET = "deployer.pipelines.get"
DEPLOYER_PIPELINES_DEPLOY = "deployer.pipelines.deploy"
DEPLOYER_PIPELINES_UNDEPLOY = "deployer.pipelines.undeploy"
DEPLOYER_DEPLOYMENTS_STATUS = "deployer.deployments.status"
DEPLOYER_DEPLOYMENTS_EXTERNAL_URL = "deployer.deployments.external_url"
DEPLOYER_DEPLOYMENTS_RESOLVE = "deployer.deployments.resolve"
EVENT_PIPELINE_VERSION_CREATED = "events.pipeline.version_created"
EVENT_PIPELINE_DEPLOYED = "events.pipeline.deployed"
EVENT_PIPELINE_UNDEPLOYED = "events.pipeline.undeployed"
# the deployer, at each start, names every deployment it serves (for the log store; lineage draws nothing of it)
EVENT_PIPELINE_SERVING = "events.pipeline.serving"

# task_scheduler
TASKS_ORCHESTRATIONS_UPLOAD = "task_scheduler.orchestrations.upload"
TASKS_ORCHESTRATIONS_LIST = "task_scheduler.orchestrations.list"
TASKS_RUN_ONCE = "task_scheduler.tasks.run_once"
TASKS_RUN_SCHEDULED = "task_scheduler.tasks.run_scheduled"
TASKS_GET = "task_scheduler.tasks.get"
TASKS_BY_ORCH_SHA = "task_scheduler.tasks.by_orch_sha"
TASKS_LIST = "task_scheduler.tasks.list"
TASKS_KILL = "task_scheduler.tasks.kill"
TASKS_LIST_RUNS = "task_scheduler.runs.list"
TASKS_RUN_LOGS = "task_scheduler.runs.logs"
EVENT_TASK_RUN_STARTED = "events.task_run.started"
# a started run put back in the queue, its main.py never started (the task scheduler's stop, a start whose answer was
# lost, or a claim check right before its main.py that PostgreSQL did not answer: its reason then says so,
# task_scheduler/store.py UNCHECKED_PUT_BACK, at most UNCHECKED_REQUEUES times a run): lineage's card reads queued
# until it starts again
EVENT_TASK_RUN_QUEUED = "events.task_run.queued"
EVENT_TASK_RUN_SUCCEEDED = "events.task_run.succeeded"
EVENT_TASK_RUN_FAILED = "events.task_run.failed"


# monitoring (seed 003's deployment management)
MONITORING_DEPLOYMENTS_ADD_TAGS = "monitoring.deployments.add_tags"
MONITORING_DEPLOYMENTS_GET_TAGS = "monitoring.deployments.get_tags"
MONITORING_DEPLOYMENTS_RETRIEVE_INFORMATION = "monitoring.deployments.retrieve_information"
MONITORING_DEPLOYMENTS_UPDATE = "monitoring.deployments.update"
MONITORING_DEPLOYMENTS_DELETE = "monitoring.deployments.delete"
MONITORING_DEPLOYMENTS_GET_MODEL_VERSION = "monitoring.deployments.get_model_version"
MONITORING_DEPLOYMENTS_SET_MODEL = "monitoring.deployments.set_model"
MONITORING_DEPLOYMENTS_GET_SHADOW_MODEL = "monitoring.deployments.get_shadow_model"
MONITORING_DEPLOYMENTS_SET_SHADOW_MODEL = "monitoring.deployments.set_shadow_model"

# monitoring: seed 003's feedback (reviews, feedback loop, training-data reference, get_stats)
MONITORING_REVIEW_PREDICTION = "monitoring.deployments.review_prediction"
MONITORING_PREDICTIONS_TO_REVIEW = "monitoring.deployments.list_predictions_to_review"
MONITORING_PREDICTION_IMAGE = "monitoring.deployments.get_prediction_image"
MONITORING_FEEDBACK_SETUP = "monitoring.deployments.setup_feedback_loop"
MONITORING_FEEDBACK_ATTACH = "monitoring.deployments.attach_dataset_version_to_feedback_loop"
MONITORING_FEEDBACK_DETACH = "monitoring.deployments.detach_dataset_version_from_feedback_loop"
MONITORING_FEEDBACK_LIST = "monitoring.deployments.list_feedback_loop_datasets"
MONITORING_FEEDBACK_STATUS = "monitoring.deployments.check_feedback_loop_status"
MONITORING_FEEDBACK_DISABLE = "monitoring.deployments.disable_feedback_loop"
MONITORING_FEEDBACK_TOGGLE = "monitoring.deployments.toggle_feedback_loop"
MONITORING_TRAINING_SET = "monitoring.deployments.set_training_data"
MONITORING_TRAINING_STATUS = "monitoring.deployments.check_training_data_metrics_status"
MONITORING_TRAINING_DISABLE = "monitoring.deployments.disable_training_data_reference"
MONITORING_GET_STATS = "monitoring.deployments.get_stats"
MONITORING_REFERENCE_FEATURE = "monitoring.reference.feature"  # assay runner only: no HTTP route
EVENT_MONITORING_REVIEW_CREATED = "events.monitoring.review_created"

# monitoring: seed 003's predictions (predict / predict_bytes, monitor / monitor_bytes)
MONITORING_PREDICT = "monitoring.deployments.predict"
MONITORING_MONITOR = "monitoring.deployments.monitor"
EVENT_MONITORING_PREDICTION_CREATED = "events.monitoring.prediction_created"

# monitoring: seed 003's continuous training and deployment, and promotion by the sequential test
MONITORING_CT_SETUP = "monitoring.deployments.setup_continuous_training"
MONITORING_CT_ATTACH = "monitoring.deployments.attach_dataset_version_to_continuous_training"
MONITORING_CT_DETACH = "monitoring.deployments.detach_dataset_version_from_continuous_training"
MONITORING_CT_TOGGLE = "monitoring.deployments.toggle_continuous_training"
MONITORING_CD_SETUP = "monitoring.deployments.setup_continuous_deployment"
MONITORING_CD_TOGGLE = "monitoring.deployments.toggle_continuous_deployment"
EVENT_MONITORING_TRAINING_STARTED = "events.monitoring.training_started"
EVENT_MONITORING_TRAINING_FINISHED = "events.monitoring.training_finished"  # lineage: run -> model version
EVENT_MONITORING_CHALLENGER_DECIDED = "events.monitoring.challenger_decided"
EVENT_MONITORING_MODEL_SWAPPED = "events.monitoring.model_swapped"


def engine_infer(deployment: str) -> str:
    """The inference subject of a deployment (`<deploy_id>-<id>`); its replicas share a queue group."""
    return f"engine.{deployment}.infer"


def engine_replica_status(deployment: str, replica: int) -> str:
    return f"engine.{deployment}.replica.{replica}.status"
