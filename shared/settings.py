"""Typed settings read from the environment (`RAILYARD_` prefix, nested with `__`)."""

from __future__ import annotations

import json
import sys
from ipaddress import ip_network
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "RAILYARD_"
ENV_NESTED_DELIMITER = "__"
COMMAND_DRAIN_TIMEOUT = 15.0  # seconds a stopping service drains the bus commands it took (shared/service.py)
TASK_STOP_TIMEOUT = 20.0  # seconds a task scheduler's stop takes at most (services/task_scheduler/scheduler.py)
ADMIN_NAME_CHARS = 254  # the longest first admin's user name: shared.messages.auth.NAME_CHARS, a sign-in's longest
ADMIN_SECRET_CHARS = 4096  # its password's and the first client's secret's: shared.messages.auth.SECRET_CHARS
ADMIN_CLIENT_ID_CHARS = 128  # the first client's id: shared.messages.auth.CLIENT_ID_CHARS
# the longest gateway public URL (without a trailing '/'): the web UI's redirect URI is it and '/', and a redirect URI
# is at most shared.messages.auth.REDIRECT_URI_CHARS (2048)
PUBLIC_URL_CHARS = 2047
# where an operator sets each bootstrap value (docker-compose.yml; `railyard up`/`make run` write <data>/secrets.json)
OPERATOR_VARIABLE = {"bootstrap_admin_password": "RAILYARD_ADMIN_PASSWORD",
                     "bootstrap_client_secret": "RAILYARD_CLIENT_SECRET"}


class NatsSettings(BaseModel):
    """Where the message bus is and how long a command may take."""

    url: str = Field("nats://127.0.0.1:14222", description="NATS server URL (comma separated for a cluster).")
    user: str = Field("", description="This process's bus identity (deploy/nats-permissions.json); empty: none.")
    password: str = Field("", description="Its password; no default outside the embedded stack.")
    engine_password: str = Field("", description="The deployer only: the `engine` identity's password, handed to "
                                 "the engine replicas it starts.")
    request_timeout: float = Field(5.0, description="Seconds a command waits for its reply.")
    connect_timeout: float = Field(2.0, description="Seconds to wait when first connecting.")
    command_workers: int = Field(8, ge=1, le=1024, description="Commands of one subject a service process handles "
                                 "at once (a subscriber that must see one at a time says so in its code); the "
                                 "database pool (postgres.pool_max) still bounds how many hold a connection.")
    events_max_age: float = Field(30 * 86400.0, description="Seconds the EVENTS stream keeps an event (every consumer "
                                  "reads them within seconds; this bounds the disk).")
    events_max_bytes: int = Field(1024**3, description="Bytes the EVENTS stream may hold; a publish beyond it is "
                                  "refused with an error, never dropped silently.")
    stream_replicas: int = Field(1, ge=1, le=5, description="Nodes of a NATS cluster that keep a copy of each platform "
                                 "stream, set when the bootstrap step creates it (3 in the Kubernetes manifests' "
                                 "3-node cluster; 1 for a single server).")
    consumer_max_deliver: int = Field(10, ge=1, description="Deliveries of an event whose handler keeps failing "
                                      "(auth's, lineage's, monitoring's durable consumers, shared/consumers.py): the "
                                      "last failure is kept in the service's dead_letters table and the event "
                                      "terminated. An event that is not JSON is a dead letter at once.")
    # finite and at most a day: a delay is sent to JetStream in integer nanoseconds (int64), and an infinite one
    # failed the settling, which FastStream then answered with a nak without a delay (an immediate redelivery loop)
    consumer_backoff: float = Field(2.0, gt=0, le=86400, allow_inf_nan=False, description="Seconds before an event "
                                    "whose handler failed is delivered again, doubling with each failure (2, 4, ... "
                                    "300 s: the 10th delivery about 13 minutes after the first).")
    consumer_backoff_max: float = Field(300.0, gt=0, le=86400, allow_inf_nan=False,
                                        description="The longest of those delays (seconds).")

    @model_validator(mode="after")
    def _backoff_within_its_max(self) -> NatsSettings:
        # the delays are min(backoff * 2**n, max): a first delay above the longest would be cut to it silently
        if self.consumer_backoff > self.consumer_backoff_max:
            raise ValueError(f"RAILYARD_NATS__CONSUMER_BACKOFF ({self.consumer_backoff:g} s) is above "
                             f"RAILYARD_NATS__CONSUMER_BACKOFF_MAX ({self.consumer_backoff_max:g} s): the first "
                             "redelivery delay cannot be longer than the longest; lower it or raise the max")
        return self


class PostgresSettings(BaseModel):
    """The PostgreSQL server; each service keeps its tables in its own schema."""

    dsn: str = Field("postgresql://railyard@127.0.0.1:15432/railyard", description="libpq-style URL.")
    pool_min: int = Field(0, description="Connections kept open per process even when unused (0: an idle "
                          "service holds no PostgreSQL backend; the first query after a pause opens one).")
    pool_max: int = Field(5, description="Most connections per process.")
    pool_idle_seconds: float = Field(30.0, description="A connection above pool_min that has been idle this long is "
                                     "closed: a burst's connections (each an idle PostgreSQL backend of ~15-20 MiB) "
                                     "do not stay for asyncpg's default 300 s.")


class S3Settings(BaseModel):
    """S3-compatible object storage (the embedded SeaweedFS gateway or MinIO)."""

    endpoint: str = Field("127.0.0.1:18333", description="host:port of the S3 API.")
    access_key: str = Field("", description="Access key; no default outside the embedded stack.")
    secret_key: str = Field("", description="Secret key; no default outside the embedded stack.")
    secure: bool = Field(False, description="Use TLS.")
    region: str = Field("us-east-1", description="Region name sent in signatures.")
    bucket_prefix: str = Field("railyard", description="Prefix of every bucket the platform creates.")


def _cidrs(value: object) -> object:
    """`10.0.0.0/8, 127.0.0.1` (or a JSON list) as CIDRs; an entry that is neither an address nor a CIDR is refused
    by name, so a typo stops the gateway at start rather than trusting nothing (or the wrong hosts) silently."""
    if isinstance(value, str):
        value = json.loads(value) if value.lstrip().startswith("[") else value.split(",")
    if not isinstance(value, list):
        return value
    cidrs = []
    for entry in filter(None, (str(e).strip() for e in value)):
        try:
            cidrs.append(str(ip_network(entry, strict=False)))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or CIDR (e.g. 10.0.0.0/8, 2001:db8::/32)") from None
    return cidrs


class GatewaySettings(BaseModel):
    """The public HTTP entry point."""

    host: str = Field("127.0.0.1", description="Address the gateway binds.")
    port: int = Field(18000, description="Port the gateway binds.")
    max_body_bytes: int = Field(64 * 1024 * 1024, description="Largest request body accepted (413 above).")
    max_upload_bytes: int = Field(10 * 1024**3, description="Largest model upload accepted (413 above).")
    max_json_bytes: int = Field(2 * 1024 * 1024, description="Largest body of a JSON route (every route but "
                                "inference and the multipart uploads; 413 above).")
    keep_alive: float = Field(75.0, gt=0, description="Seconds an idle keep-alive connection stays open. Longer "
                              "than clients keep idle connections for reuse (httpx 5 s, the SDK's client): with "
                              "uvicorn's default of 5 s, a request sent on a connection as the gateway closed it "
                              "got no answer ('Server disconnected without sending a response'); 75 s as nginx.")
    max_connections: int = Field(4096, ge=1, description="Open client connections the gateway keeps at most (per "
                                 "gateway process); a connection above it is answered 503 at once and closed, the "
                                 "ones already open keep being served, unless its source holds less than its fair "
                                 "share: then an idle keep-alive connection of the source holding the most is "
                                 "closed for it.")
    max_connections_per_source: int = Field(256, ge=1, description="Open connections one source address may hold "
                                            "(an IPv6 client: its /64); the TCP peer, a trusted proxy exempt. Above "
                                            "it: 503 and closed, as max_connections, so one client cannot take them "
                                            "all.")
    body_timeout: float = Field(60.0, description="Seconds a client has to send a request body (uploads: seconds "
                                "without a byte); 408 after.")
    token_rate_per_source: float = Field(10.0, description="Token requests per second from one source address (an "
                                         "IPv6 client: its /64).")
    token_burst_per_source: int = Field(50, description="Token requests one source address may send at once.")
    token_rate_per_client: float = Field(100.0, description="Token requests per second for one confidential client "
                                         "id (requests carrying its secret; a public client's are counted per "
                                         "source instead).")
    token_burst_per_client: int = Field(500, description="Token requests for one confidential client id at once.")
    trusted_proxies: Annotated[list[str], NoDecode, BeforeValidator(_cidrs)] = Field(
        default_factory=list, description="Reverse proxies (addresses or CIDRs, comma separated) whose forwarding "
        "header (trusted_proxy_header) is believed: from them, a request's source address (per-source token limit, "
        "failed-login counts) is the right-most address in it that is not a trusted proxy. Empty: the TCP peer, the "
        "header ignored.")
    trusted_proxy_header: Annotated[Literal["x-forwarded-for", "forwarded"],
                                    BeforeValidator(lambda v: v.strip().lower() if isinstance(v, str) else v)] = Field(
        "x-forwarded-for", description="The header the trusted proxies write, the only one read: `x-forwarded-for`, "
        "or `forwarded` (RFC 7239, its `for=` parameters). A proxy passes the other one through as the client sent "
        "it, so never both.")
    public_url: str = Field("", description="Base URL clients reach the gateway at (inference URLs use it; the web "
                            "UI's sign-in redirect URI is it and '/'): at most 2047 characters.")

    @field_validator("public_url")
    @classmethod
    def _public_url_a_sign_in_takes(cls, url: str) -> str:
        # the UI's redirect URI (services/gateway/authorize.py, registered_redirect_uri) is the URL without its
        # trailing slashes and '/'; a longer one than a redirect URI may be was refused at every sign-in, the
        # gateway up and the UI unusable (docs/auth.md, "The registered redirect URI")
        if len(url.rstrip("/")) > PUBLIC_URL_CHARS:
            raise ValueError(f"the gateway's public URL must be at most {PUBLIC_URL_CHARS} characters (this one has "
                             f"{len(url.rstrip('/'))} without a trailing '/'): the web UI's sign-in redirect URI (it "
                             "and '/') takes at most 2048, so no one could ever sign in to the UI")
        return url


class AuthSettings(BaseModel):
    """Tokens, the first admin and client, and brute-force protection."""

    instance_name: str = Field("Railyard", description="Name shown by features/list.")
    issuer: str = Field("railyard", description="`iss` of every token; the gateway and services check it.")
    audience: str = Field("railyard-api", description="`aud` of every token.")
    access_token_ttl: int = Field(3600, description="Seconds an access token is valid (expires_in).")
    refresh_token_ttl: int = Field(1800, description="Seconds a refresh token is valid (refresh_expires_in).")
    authorization_code_ttl: int = Field(60, description="Seconds an authorization code (the web UI's sign-in, PKCE) "
                                        "may wait for its exchange; it works once.")
    bootstrap_admin_username: str = Field("admin", description="The admin user created on first start.")
    bootstrap_admin_password: str = Field("", description="Its password; no default outside the embedded stack.")
    bootstrap_client_id: str = Field("api-client", description="The confidential client created on first start.")
    bootstrap_client_secret: str = Field("", description="Its secret; no default outside the embedded stack.")
    client_secret_key: str = Field("", description="Server key of the keyed hash (HMAC-SHA256) of client secrets; "
                                   "no default outside the embedded stack.")
    failed_login_delay: float = Field(0.5, description="Extra seconds per recent failed login (capped at 4 s).")
    lockout_after: int = Field(10, description="Failed logins in a row that lock an account.")
    lockout_seconds: int = Field(900, description="How long a locked account stays locked.")
    revocation_poll_interval: float = Field(20.0, description=(
        "Seconds between a verifier's reads of what changed in the revocation list (deactivated users, revoked "
        "sessions and clients): the bound on a revocation whose event was missed. The whole list is read at the "
        "start and every 10 minutes (shared.authz.FULL_READ_INTERVAL)."))
    # argon2id's cost (argon2-cffi's defaults, RFC 9106's second recommendation); only the test stack lowers it
    password_hash_time_cost: int = Field(3, ge=1, description="argon2id passes of a password hash.")
    password_hash_memory_kib: int = Field(65536, ge=8, description="argon2id memory of a password hash (KiB).")
    password_hash_parallelism: int = Field(4, ge=1, description="argon2id lanes of a password hash.")

    @field_validator("bootstrap_admin_username", "bootstrap_client_id")
    @classmethod
    def _name_a_sign_in_takes(cls, name: str, info: ValidationInfo) -> str:
        # a sign-in's user name is at most NAME_CHARS (254), a token request's client id CLIENT_ID_CHARS (128)
        # (shared/messages/auth.py; not imported: settings import nothing of the platform's): a longer or empty admin
        # or client was created and could never be used
        what, bound, why = {
            "bootstrap_admin_username": ("the first admin's user name", ADMIN_NAME_CHARS,
                                         "a sign-in takes no other, so that admin could never sign in"),
            "bootstrap_client_id": ("the first client's id", ADMIN_CLIENT_ID_CHARS,
                                    "a token request takes no other, so that client could never be used"),
        }[info.field_name]
        if not name or len(name) > bound:
            raise ValueError(f"{what} must be 1-{bound} characters (this one has {len(name)}): {why}")
        return name

    @field_validator("bootstrap_admin_password", "bootstrap_client_secret")
    @classmethod
    def _secret_a_sign_in_takes(cls, secret: str, info: ValidationInfo) -> str:
        # a sign-in's password and a client's secret are at most SECRET_CHARS (4096, shared/messages/auth.py).
        # Decision: refused at every start, also once the admin exists and the password is unused: a service never
        # starts with a value that would fail the day it is used (a fresh database), and any shorter value does
        # (docs/auth.md, "First start")
        if len(secret) > ADMIN_SECRET_CHARS:
            raise ValueError(f"at most {ADMIN_SECRET_CHARS} characters (this one has {len(secret)}; docker-compose.yml"
                             f" sets it from {OPERATOR_VARIABLE[info.field_name]}): a token request takes no longer "
                             "password or client secret, so it could never be used")
        return secret


class RegistrySettings(BaseModel):
    """Model uploads and conversions."""

    worker_timeout: float = Field(300.0, description="Seconds a check or conversion process may run.")
    worker_cpu_seconds: int | None = Field(None, ge=1, description="CPU seconds a check or conversion process may "
                                           "use (RLIMIT_CPU); unset: worker_timeout plus one.")
    worker_memory_mb: int = Field(4096, description="Memory limit of a check or conversion: its sandbox as a whole "
                                  "(a memory cgroup) and each process's address space.")
    worker_file_size_mb: int = Field(1024, description="Largest file a check or conversion process may write.")
    worker_disk_mb: int = Field(2048, description="Disk quota of a check or conversion: MiB its working directory "
                                "may grow by.")
    worker_disk_files: int = Field(10_000, description="File quota of a check or conversion: files and directories "
                                   "its working directory may gain.")
    worker_processes: int = Field(64, description="Processes and threads a check or conversion sandbox may have.")
    secrets_key: str = Field("", description="Fernet key for connection details and registry tokens at rest.")
    private_urls: bool | None = Field(None, description="May tenants' URLs (model registries, connection details) "
                                      "point at loopback and private addresses? Unset: in development mode only. "
                                      "The platform's own endpoints and cloud metadata are refused either way "
                                      "(shared/urlcheck.py).")


class LogSettings(BaseModel):
    """Inference logs: how the engine batches records and how the log store writes, keeps and serves them."""

    max_row_bytes: int = Field(1024 * 1024, description="A logged row above this size loses columns, largest "
                               "input first, then outputs (listed in metadata.dropped).")
    engine_flush_ms: float = Field(100.0, description="Milliseconds at most an engine gathers records before "
                                   "publishing them (sooner when engine_flush_bytes are gathered).")
    engine_flush_bytes: int = Field(1024 * 1024, gt=0, description="Bytes of records (Arrow sizes) that make an "
                                    "engine publish before engine_flush_ms is up.")
    engine_max_pending_rows: int = Field(1_000_000, description="Rows an engine holds unpublished before it "
                                         "reports records it cannot log.")
    engine_segments: bool = Field(True, description="An engine replica writes its log batches to object storage as "
                                  "Parquet segments itself and publishes only their description, which the log store "
                                  "indexes (false: the rows travel through INFERENCE_LOGS and the log store writes "
                                  "them). Batches with rows of re-sent requests, or columns Parquet cannot store, and "
                                  "any batch object storage refuses, go through the stream either way.")
    engine_segment_ms: float = Field(750.0, gt=0, description="With engine_segments: milliseconds at most an engine "
                                     "gathers records before writing a segment (sooner at engine_segment_bytes). Each "
                                     "write wakes the replica's writer, SeaweedFS, nats-server (an fsync), the log "
                                     "store and PostgreSQL at once and slows the batch-1 requests beside it ~2x for "
                                     "~20 ms (docs/performance.md items 86, 89: 750 rather than 500 for the tail); a "
                                     "lone record is readable ~0.8-0.9 s after it came. The assay runner's "
                                     "assays.close_delay allows for it: raise that with this.")
    engine_segment_bytes: int = Field(16 * 1024 * 1024, gt=0, description="With engine_segments: bytes of records "
                                      "(Arrow sizes) that make an engine write a segment before engine_segment_ms. "
                                      "16 MiB since session 37 (4 MiB before): a busy replica's batch-1000 Arrow "
                                      "request ~6 % less CPU in the stack, assay runs over its segments ~25 % "
                                      "faster, pages alike (docs/performance.md item 100).")
    flush_interval: float = Field(0.25, description="Seconds the log store gathers rows that came through the "
                                  "stream into one segment (an engine's segment descriptions are indexed at once).")
    ack_wait: float = Field(30.0, gt=0, description="Seconds before JetStream redelivers a record the log store "
                            "took and did not acknowledge (it died holding it); set when its consumer is created.")
    unknown_retry: float = Field(2.0, gt=0, le=60, allow_inf_nan=False, description="Seconds before a batch of a "
                                 "deployment the deployer has not announced yet comes back to the log store (a nak's "
                                 "delay), doubling at each return up to 60 s; an announcement asks the held batches "
                                 "back at once (docs/logs.md).")
    segment_max_bytes: int = Field(64 * 1024 * 1024, description="Bytes of records that make the log store write "
                                   "a segment before flush_interval is up.")
    row_group_rows: int = Field(8192, description="Rows per Parquet row group (the unit a page reads).")
    compact_target_rows: int = Field(500_000, description="Rows a compacted segment aims for.")
    compact_min_age: float = Field(5.0, description="Seconds a fresh segment stays before it may be compacted.")
    compact_below_bytes: int = Field(2 * 1024 * 1024, gt=0, description="Only segments smaller than this (and "
                                     "below half of compact_target_rows) are merged: larger ones are already a fair "
                                     "size for object storage and pages, and merging them would write every row to "
                                     "object storage a second time.")
    maintenance_interval: float = Field(60.0, description="Seconds between compaction and retention passes.")
    retention_days: float = Field(30.0, description="Days logs are kept unless a pipeline sets its own.")
    superseded_grace: float = Field(120.0, description="Seconds a replaced segment's object outlives it, so "
                                    "readers that already found it can finish.")
    dedupe_hours: float = Field(72.0, description="Hours a committed batch id is remembered to refuse a "
                                "re-published copy.")
    page_max_bytes: int = Field(4 * 1024 * 1024, description="Bytes of log data one get_logs page holds at most "
                                "(ByteLimited above it).")
    max_page_size: int = Field(100_000, description="Largest page_size get_logs accepts.")
    stream_max_bytes: int = Field(8 * 1024**3, description="Bytes of not-yet-stored records INFERENCE_LOGS may hold "
                                  "(stored ones are removed); a publish beyond it is refused with an error.")
    stream_max_age: float = Field(7 * 86400.0, description="Seconds a record may wait in INFERENCE_LOGS for the log "
                                  "store before the stream removes it (the log store down that long).")
    engine_max_pending_bytes: int = Field(256 * 1024 * 1024, description="Bytes of records an engine replica holds "
                                          "unpublished (the stream refusing or unreachable) before it counts further "
                                          "records as lost.")


class AssaySettings(BaseModel):
    """Drift assays."""

    tick: float = Field(1.0, description="Seconds between checks for windows that have closed.")
    max_windows: int = Field(1000, description="Most windows one run_interactive request, or one catch-up pass "
                             "of a scheduled assay, computes; the most closed windows a scheduled assay may start "
                             "with (assays/create), and the newest an assay turned on again scores (set_active).")
    close_delay: float = Field(1.25, description="Seconds after a window closes before it is due: the time an "
                               "engine has to publish its records to INFERENCE_LOGS (a record's time is when the "
                               "replica received the request: the request's own time counts, and the engine gathers "
                               "records up to logs.engine_segment_ms before publishing). A due window is scored once "
                               "the log store has stored every record published until then (docs/assays.md, "
                               "Scheduling).")
    max_log_wait: float = Field(600.0, gt=0, description="Seconds a due window waits for the log store to store "
                                "what was published until it was due (counted from the assay runner's start for a "
                                "window due before it); then it is scored with what there is (logs_complete false "
                                "in its result, a warning in the log).")


class TaskSettings(BaseModel):
    """Orchestrations, tasks and task runs (the task scheduler)."""

    work_dir: Path | None = Field(None, description="Where runs get their working directories and requirements "
                                  "their environments (default: <stack data_dir>/tasks).")
    tick: float = Field(5.0, description="Longest sleep between the scheduler's passes. A pass runs when something "
                        "can be due (a schedule point, a heartbeat deadline) or a PostgreSQL notification announces "
                        "work (a queued run, a kill); this bounds the delay a lost notification causes.")
    max_zip_bytes: int = Field(100 * 1024 * 1024, description="Largest orchestration zip accepted.")
    max_zip_files: int = Field(2000, description="Most members an orchestration zip may have.")
    max_unpacked_bytes: int = Field(500 * 1024 * 1024, description="Most bytes an orchestration unpacks to.")
    max_compression_ratio: float = Field(100.0, description="Highest unpacked/packed ratio of a zip member.")
    install_timeout: float = Field(600.0, description="Seconds installing one requirements file may take.")
    install_from_index: bool = Field(True, description="Download wheels of requirements the base environment "
                                     "lacks from the package index (binary wheels only); false: refuse them.")
    default_timeout: int = Field(900, description="Seconds a run may take when its task sets no timeout.")
    max_timeout: int = Field(24 * 3600, description="Largest timeout a task may ask for; monitoring reads it too "
                             "(setup_continuous_training): give both services the same value.")
    run_memory_mb: int = Field(2048, description="Memory limit of a run: its sandbox as a whole (a memory cgroup) "
                               "and each process's address space.")
    run_cpu_seconds: int = Field(3600, description="CPU seconds a run may use.")
    run_disk_mb: int = Field(4096, description="Disk quota of a run: MiB its working directory (the unpacked zip "
                             "included) may grow by.")
    run_disk_files: int = Field(50_000, description="File quota of a run: files and directories its working "
                                "directory may gain.")
    install_disk_mb: int = Field(8192, description="Disk quota of installing one requirements file: MiB the "
                                 "environment may grow by.")
    install_disk_files: int = Field(200_000, description="File quota of installing one requirements file: files "
                                    "and directories the environment may gain.")
    max_concurrent_runs_per_workspace: int = Field(2, description="Runs of one workspace at once; more wait in "
                                                   "order.")
    max_runs_per_process: int = Field(4, description="Runs one scheduler process supervises at once.")
    heartbeat_interval: float = Field(2.0, description="Seconds between a supervisor's heartbeats on its runs.")
    supervisor_lost_after: float = Field(10.0, description="Seconds without a heartbeat after which a running "
                                         "run's supervisor is taken as dead and the run failed.")
    missed_run_grace: float = Field(30.0, description="Seconds late a schedule point may fire under the skip "
                                    "policy.")
    max_log_bytes: int = Field(16 * 1024 * 1024, description="Log bytes kept per run (a final line notes the cut).")
    token_ttl: int = Field(24 * 3600 + 60, description="Longest validity of the token handed to a run; a run's "
                           "token is valid for its timeout plus a minute, at most this.")


class DeployerSettings(BaseModel):
    """Engine replicas the deployer runs."""

    scale_down_after: float = Field(10.0, gt=0, description="Seconds an autoscaled deployment waits after its "
                                    "last scaling before it retires an idle replica.")
    ready_timeout: float = Field(60.0, gt=0, description="Seconds a deployment's new replicas have to answer "
                                 "before the deploy fails (the gateway waits this long for a deploy or a copy); "
                                 "also what a replacement or an added replica has before it is killed and replaced "
                                 "(crash-loop back-off).")
    stop_timeout: float = Field(20.0, gt=0, description="Seconds a stopping replica has to drain before it is "
                                "killed; a set's replicas drain at once (the gateway waits this long for an "
                                "undeploy).")
    liveness_timeout: float = Field(60.0, ge=0, description="Seconds a replica that answered before may leave its "
                                    "status probes unanswered (and liveness_probes of them in a row) before it is "
                                    "taken as hung, killed and replaced as one that exited; the deployer probes each "
                                    "replica every liveness_timeout / liveness_probes seconds. 0: never (a replica "
                                    "held in a debugger). A busy replica answers within a second "
                                    "(docs/deployment.md, \"Liveness: a hung replica is replaced\").")
    liveness_probes: int = Field(6, ge=1, description="Status probes in a row a replica leaves unanswered, over "
                                 "liveness_timeout at least, before it is taken as hung.")
    silent_kept_for: float = Field(10.0, gt=0, le=86400, allow_inf_nan=False, description="Seconds a replica "
                                   "that answered its status probe before keeps that answer (Running) while its "
                                   "probes go unanswered (busy), 3 in a row at least; then it is Starting, the "
                                   "details naming the silence (docs/deployment.md, \"Replica status: busy is not "
                                   "starting\"). Keep it below liveness_timeout.")
    # finite: a respawn time is now + the delay, compared on every supervisor pass
    crash_backoff: float = Field(1.0, gt=0, le=86400, allow_inf_nan=False, description="Seconds before a replica "
                                 "that exited (or was killed for not answering within ready_timeout) before it "
                                 "came up is replaced, doubling with each such exit in a row (1, 2, 4 ... 60 s), as "
                                 "Kubernetes' CrashLoopBackOff (docs/deployment.md, \"Crash-loop back-off\").")
    crash_backoff_max: float = Field(60.0, gt=0, le=86400, allow_inf_nan=False,
                                     description="The longest of those delays (seconds).")
    crash_stable_after: float = Field(10.0, ge=0, le=86400, allow_inf_nan=False, description="Seconds a replica "
                                      "that answered a status probe must have lived to count as come up: its exit "
                                      "is replaced at once and resets the back-off.")

    @model_validator(mode="after")
    def _backoff_within_its_max(self) -> DeployerSettings:
        # the delays are min(backoff * 2**n, max): a first delay above the longest would be cut to it silently
        if self.crash_backoff > self.crash_backoff_max:
            raise ValueError(f"RAILYARD_DEPLOYER__CRASH_BACKOFF ({self.crash_backoff:g} s) is above "
                             f"RAILYARD_DEPLOYER__CRASH_BACKOFF_MAX ({self.crash_backoff_max:g} s): the first "
                             "restart delay cannot be longer than the longest; lower it or raise the max")
        return self


class MonitoringSettings(BaseModel):
    """Seed 003's deployment monitoring."""

    max_image_bytes: int = Field(25 * 1024 * 1024, gt=0, description="Largest image predict/monitor accept as a "
                                 "multipart upload (the gateway stages it in object storage; 413 above). Images "
                                 "sent base64 in the JSON body stay within the JSON body limit.")
    images_at_once: int = Field(2, ge=1, description="Images predict/monitor decode and measure at once (about "
                                "130 MiB each at the 16-megapixel limit); the others wait for a turn.")
    stats_at_once: int = Field(2, ge=1, description="get_stats computations over stored predictions at once (each "
                               "reads up to 200,000 predictions into memory); the others wait for a turn.")


class SandboxSettings(BaseModel):
    """How users' code is isolated (shared/sandbox.py) and its default limits."""

    mode: Literal["auto", "require", "off-for-single-user"] = Field(
        "auto", description="auto/require: namespaces (a dedicated OS user as root, a user namespace otherwise) "
        "or refuse to run users' code; off-for-single-user: no isolation at all (logged loudly).")
    user: str = Field("railyard-sandbox", description="OS user users' code runs as when Railyard runs as root "
                      "(created if missing).")
    memory_mb: int = Field(1024, description="Memory limit of a sandbox: all its processes together (a memory cgroup, "
                           "where the host gives one) and each process's address space (RLIMIT_AS).")
    cpu_seconds: int = Field(600, description="CPU seconds a sandboxed process may use in its life (RLIMIT_CPU).")
    processes: int = Field(64, description="Processes and threads of a sandbox, all together (pids.max of a cgroup "
                           "of its own, where the host gives one; RLIMIT_NPROC otherwise).")
    open_files: int = Field(256, description="Open files of a sandboxed process (RLIMIT_NOFILE).")
    file_size_mb: int = Field(256, description="Largest file a sandboxed process may write; also its /tmp size.")
    disk_mb: int = Field(1024, description="Disk quota of a sandbox: MiB its working directory may grow by, all "
                         "its processes together (the whole sandbox is stopped past it).")
    disk_files: int = Field(20_000, description="File quota of a sandbox: files and directories its working "
                            "directory may gain.")
    wall_seconds: float = Field(25.0, description="Seconds one inference (or one one-shot run) may take before "
                                "the sandbox is killed (under the gateway's 30 s inference timeout).")
    threads: int = Field(0, ge=0, description="Threads of the numeric libraries (OMP_NUM_THREADS, "
                         "OPENBLAS_NUM_THREADS, MKL_NUM_THREADS and the others of docs/security.md, \"Threads\") in "
                         "a sandbox whose caller sets none: task runs (the ML backends' fit too) and environment "
                         "installs. 0: the CPUs the service may use divided by the sandboxes it may run at once "
                         "(the task scheduler's tasks.max_runs_per_process), at least 1. Either way at most a "
                         "quarter of the sandbox's process limit. The engine's and the registry's workers use 1.")


class StackSettings(BaseModel):
    """The embedded stack started by `railyard up` (development and tests)."""

    data_dir: Path = Field(Path(".railyard"), description="One directory for all data, logs and secrets.")
    host: str = Field("127.0.0.1", description="Address every embedded server binds.")
    nats_port: int = Field(14222, description="NATS client port.")
    nats_monitor_port: int = Field(18222, description="NATS HTTP monitoring port.")
    nats_sync_interval: str = Field("always", description="JetStream's sync_interval: `always` fsyncs every write "
                                    "before it is acknowledged (an acknowledged record survives a host crash), or a "
                                    "duration such as `2m` (NATS's default: faster, loses up to that much on a crash).")
    nats_prof_port: int = Field(0, description="nats-server's profiler (pprof over HTTP, `prof_port`) on this port, "
                                "for profiling (bench/cpu_account.py --pprof-nats); 0: off.")
    nats_gomaxprocs: int = Field(1, description="Threads running nats-server's Go code at once (GOMAXPROCS); 0: "
                                 "Go's default, one per core. One: the stack's ten Python processes share the cores, "
                                 "and a second scheduler thread only adds wake-ups (docs/performance.md, NATS).")
    postgres_port: int = Field(15432, description="PostgreSQL port.")
    s3_port: int = Field(18333, description="S3 API port of the SeaweedFS gateway.")
    weed_master_port: int = Field(19333, description="SeaweedFS master port.")
    weed_volume_port: int = Field(18081, description="SeaweedFS volume server port.")
    weed_filer_port: int = Field(18888, description="SeaweedFS filer port.")
    restart_backoff_max: float = Field(5.0, description="Longest wait before restarting a crashed service.")
    stop_grace: float = Field(5.0, gt=0, description="Seconds a service has, on `railyard down`, SIGTERM or Ctrl-C, to "
                              "finish what it took before it is killed (then the servers stop, each with its own "
                              "grace); the deployer has deployer.stop_timeout more, for its engine replicas to drain, "
                              "and the task scheduler TASK_STOP_TIMEOUT (20 s) more, to stop its runs and record "
                              "their end.")


class Settings(BaseSettings):
    """Every setting of every Railyard process."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED_DELIMITER, extra="ignore"
    )

    env: Literal["development", "production"] = Field(
        "development", description="development allows loopback URLs and dev-only conveniences."
    )
    log_level: str = Field("INFO", description="Python logging level.")
    probe_dir: Path | None = Field(None, description="When set, a serving service keeps `live` (rewritten every 5 s) "
                                   "and `ready` (while its health check is ok) in this folder, for container probes "
                                   "(shared/probe_files.py; the Kubernetes manifests set it).")
    request_path_slice_us: int = Field(100, ge=0, description="The scheduler slice (microseconds, Linux >= 6.12: "
                                       "sched_setattr) the gateway, the engine replicas and the embedded nats-server "
                                       "ask for, so that a woken one runs at once instead of after another "
                                       "process's slice, up to a 4 ms timer tick (shared/sched_hint.py); 0: the "
                                       "kernel's default.")
    nats: NatsSettings = NatsSettings()
    postgres: PostgresSettings = PostgresSettings()
    s3: S3Settings = S3Settings()
    gateway: GatewaySettings = GatewaySettings()
    auth: AuthSettings = AuthSettings()
    registry: RegistrySettings = RegistrySettings()
    logs: LogSettings = LogSettings()
    assays: AssaySettings = AssaySettings()
    tasks: TaskSettings = TaskSettings()
    deployer: DeployerSettings = DeployerSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    sandbox: SandboxSettings = SandboxSettings()
    stack: StackSettings = StackSettings()


DEPLOY_STEPS_TAKE = 6.6
"""Of the request timeout: what a deploy may take by the deployer's own bounds beside its replicas' start
(deployer.ready_timeout) and one set's stop (deployer.stop_timeout), its answer's way back included
(services/deployer/handlers.py: its reads and model lookups 1, its first database step 0.8, a redeploy's record 0.8,
the looks at a failed record 3.8, the answer's margin 0.2; tests/unit/test_deployer_waits.py holds the two equal)."""
DEPLOY_HOLDS_LOCK = 5.4
"""Of the request timeout: how long another deploy of the pipeline may hold its lock beside its replicas' start and
a set's stop (its first database step 0.8, its record 0.8, the looks at a failed one 3.8): a deploy's caller waits
for one such deploy ahead of it (deploy_wait)."""


def deploy_wait(settings: Settings) -> float:
    """Seconds a caller of the deployer's pipelines/deploy waits for its answer (the gateway's route, monitoring's
    model swaps), the longer of two: its model lookups (as long as a model check, registry.worker_timeout, on the
    routes that may wait for one) and the bus's request timeout; or what the deployer lets the deploy take
    (DEPLOY_STEPS_TAKE of the request timeout, its replicas' deployer.ready_timeout and a set's
    deployer.stop_timeout) after another deploy of its pipeline held the lock as long as it may (DEPLOY_HOLDS_LOCK,
    ready_timeout and stop_timeout again): 220 s with the defaults, where the first is 305 s. Before, the second was
    twice the request timeout and ready_timeout only: where worker_timeout was below ~108 s (the test stack's 45 s:
    a 70 s wait) a caller gave up (a 504) on a deploy the deployer still answered, and carried out, up to 112 s
    after its start, and a deploy behind another one of its pipeline waited for the lock half the request timeout
    only (deployer's deploy_lock_wait: what the caller's wait left, at its floor), a 409 deploy_in_progress when the
    other's replicas took longer than 2.5 s to serve."""
    request = settings.nats.request_timeout
    start_and_stop = settings.deployer.ready_timeout + settings.deployer.stop_timeout
    own = DEPLOY_STEPS_TAKE * request + start_and_stop
    ahead = DEPLOY_HOLDS_LOCK * request + start_and_stop
    return max(request + settings.registry.worker_timeout, own + ahead)


COPY_STEPS_TAKE = 1.6
"""Of the request timeout: what a pipelines/copy with `deploy` may take beside a deploy's own (deploy_wait): the
copy's create and its new rows' read (services/deployer/handlers.py's copy_pipeline, 0.8 each; its read of the
source is a deploy's read)."""


def copy_wait(settings: Settings) -> float:
    """Seconds a caller of the deployer's pipelines/copy waits for its answer (the gateway's route): a deploy's
    (deploy_wait) and COPY_STEPS_TAKE of the request timeout, 313 s with the defaults; the deployer answers a copy with
    `deploy` within it. Before, its caller waited the request timeout twice and deployer.ready_timeout (70 s), and a
    copy whose lookups or steps took longer, or whose replicas took all their ready_timeout, was a 504 while it went
    on."""
    return deploy_wait(settings) + COPY_STEPS_TAKE * settings.nats.request_timeout


def env_names(model: type[BaseModel] = Settings, prefix: str = ENV_PREFIX) -> set[str]:
    """All environment variable names the settings read, e.g. RAILYARD_NATS__URL."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= env_names(annotation, f"{prefix}{name.upper()}{ENV_NESTED_DELIMITER}")
        else:
            names.add(f"{prefix}{name.upper()}")
    return names


def _env_name(loc: tuple) -> str:
    """The environment variable of an error's location: (nats, consumer_backoff) is RAILYARD_NATS__CONSUMER_BACKOFF
    (a list item's index, or whatever is below a setting, in brackets after it)."""
    name, model, rest = ENV_PREFIX.rstrip("_"), Settings, list(loc)
    separator = "_"
    while rest and model is not None and isinstance(rest[0], str) and rest[0] in model.model_fields:
        part = rest.pop(0)
        name += f"{separator}{part.upper()}"
        annotation = model.model_fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        separator = ENV_NESTED_DELIMITER
    return name + "".join(f"[{part}]" for part in rest)


def configuration_errors(exc: Exception) -> list[str]:
    """One line per problem of a failed `Settings()`: the environment variable and why (not pydantic's copy of the
    value: it may be a secret)."""
    if isinstance(exc, ValidationError):
        lines = []
        for error in exc.errors(include_url=False, include_input=False):
            message = error["msg"].removeprefix("Value error, ")
            lines.append(" ".join(f"{_env_name(error['loc'])}: {message}".split()))
        return lines
    # pydantic-settings' SettingsError (a nested setting's JSON that does not parse) names the field; its cause
    # says why
    text = str(exc) if exc.__cause__ is None else f"{exc} ({exc.__cause__})"
    return [" ".join(text.split()) or type(exc).__name__]


def load_settings(program: str) -> Settings:
    """`Settings()`, or every problem with it on stderr, one line each naming its variable, and exit status 2 (no
    traceback): for the services' and `railyard`'s start."""
    try:
        return Settings()
    except Exception as exc:  # a setting's validation, or a nested setting's JSON
        for line in configuration_errors(exc):
            print(f"{program}: bad configuration: {line}", file=sys.stderr)
        sys.exit(2)
