"""Where the client's URL and credentials come from, the tokens it holds, and the HTTP calls it makes.

Credentials are looked up in this order (the first that gives a URL and a way to authenticate wins):

1. arguments to `Client(...)` (when any of username, password, token or client_id is given, the user comes
   from the arguments alone; the client id and secret still fall back to the environment and the file);
2. environment variables `RAILYARD_CLIENT_URL`, `RAILYARD_CLIENT_USERNAME`, `RAILYARD_CLIENT_PASSWORD`,
   `RAILYARD_CLIENT_ID`, `RAILYARD_CLIENT_SECRET`, `RAILYARD_CLIENT_TOKEN` (a bearer token used as is, e.g. the
   scoped token of a task run) and `RAILYARD_CLIENT_WORKSPACE`;
3. the credentials file `railyard login` writes (`RAILYARD_CLIENT_CREDENTIALS`, default
   `$XDG_CONFIG_HOME/railyard/credentials.json`, i.e. `~/.config/railyard/credentials.json`, mode 0600). On POSIX
   a file that is another user's, or that its group or others may write, is refused (UnsafeCredentials, a
   ConfigurationError: `read_credentials`), as ssh refuses such a key: its writer would choose the server the
   tokens and client secret go to and the user the commands run as.

How long a call waits: `Client(timeout)` (60 s), and for the gateway's long commands (a deploy, a copy, an undeploy,
a model swap, a deployment's predict, an upload: 315 s for a model's, which the registry checks, 75 s for a file's,
rows' or orchestration zip's, counted once the body is sent, ...) as long as the gateway may take on them at its
default settings (`ROUTE_TIMEOUTS`), each of which `Client(route_timeouts={"pipelines/deploy": 900})` or the variable
`RAILYARD_CLIENT_ROUTE_TIMEOUTS` (`pipelines/deploy=900,pipelines/copy=910`; the argument's routes win) replaces, for
a server whose gateway waits longer; the CLI reads the variable too. A route named there must be one of the API's
(`API_ROUTES`: a misspelt one is a ConfigurationError, where it was taken and changed nothing); an inference's wait is
Pipeline.infer's `timeout`.

With only a client id and secret (an inference client of a workspace), the client signs in with the
client_credentials grant: its tokens may run inferences on that workspace's deployments (`Client.infer`).

The file's tokens are used only for the user and client they were issued to: a username (given or in the
environment) without its password that is not the saved user's is a ConfigurationError asking for the password,
and another client id signs in as that client; neither runs as the saved user.

Refresh tokens are single-use, so a session that came from the file writes the refreshed tokens back to it (over the
tokens it read only: a file another `railyard login` rewrote since is left alone, and so is one another process
refreshed since). Threads sharing a session refresh it once (a lock; the threads that waited use the refreshed
token, or raise the error of a refresh that failed, a ConnectionFailed say, rather than each try again after it in
turn): until session 42 each thread whose call found the token expired refreshed it with the same refresh token,
and the server refused all but the first. Two processes that read the same file (two `railyard` commands at once, a
notebook's Client beside them) hold the same refresh token: the first to refresh spends it and writes its tokens;
the other's refresh is then refused, and that session takes the file's newer tokens (same server, user and client)
rather than say the session expired; until session 42 it said "run `railyard login` again" while the file held a
valid sign-in. It takes the file's client secret with them (same client id): after the client's secret was rotated
and `railyard login` run again with the new one, the old secret refreshed nothing ("the session expired"). Every
change of the file is a read and a write under a lock of it (`credentials.json.lock` beside it; POSIX only; held
to the file's rule: another user's, or one its group or others may write, or a symbolic link, is refused,
UnsafeCredentials, where a lock file someone else made and held stopped every save, session 43). A process that forks
gets each session's refresh lock new in the child, and the `.lock` another thread held at the fork is released for
the child's copy too (until session 43 the child's first refresh, or its save, waited for ever, and the parent's next
save for as long as the child lived). When
the file cannot be written (a full disk, a read-only folder, its permissions), the session goes on with the
refreshed tokens in memory and warns (a `TokensNotSaved` warning, `railyard_client.TokensNotSaved`; the
`railyard` command prints it as `railyard: warning: ...`; `Client.tokens_not_saved` says it for as long as it
holds): the file's refresh token was spent by the refresh, so a later command needs `railyard login` again unless
this session saves its tokens at a later refresh, which it tries over the tokens the file still holds. It warns each
time the tokens go from saved to not saved (not at each refresh while the file stays unwritable), in a long-running
process too: Python's default filter shows a warning once per place and text, so until session 42 a second failure
(after a refresh that saved them, or another Client's in the same process, with the same file and error) was silent;
the warning filters a program sets (`ignore`, `error`, `once`) apply as to any warning. Filter it by its category:
`warnings.filterwarnings("ignore", category=railyard_client.TokensNotSaved)` (or `-W
ignore::railyard_client.TokensNotSaved`); a filter by `module="railyard_client"` does not match it, since it is
shown at (and attributed to) the program's own line that led to the refresh, not the SDK's (session 43's
decision). Before, the failure was an
OSError out of the call that refreshed, and the refreshed tokens were lost with it (`railyard token` printed nothing
and exited 1): the user was signed out.

The workspace `railyard workspaces use` chooses is kept in the same file per server and user (its `workspaces`:
`{server URL: {username: workspace id}}`): another user signing in to the same server from the same machine, by
`railyard login` or by the variables, starts in their own choice (else their first workspace), not in the last
user's, and signing in again keeps each user's. A file written before (one `workspace` for the file's server and
user) is read as that user's choice and rewritten in the new form the next time a choice is saved; one that names no
user (the previous version's `workspaces use` signed in by the variables) is the choice of every user of that server
who has none of their own, as it was.
"""

from __future__ import annotations

import base64
import contextlib
import difflib
import errno
import json
import math
import os
import re
import stat
import sys
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from railyard_client.errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectionFailed,
    InvalidInput,
    RailyardError,
    error_from_answer,
)


class _WithoutHttpxCommandLine:
    """Refuses `httpx._main` while httpx is first imported here. httpx's `__init__` imports its own command line
    client whenever click, rich and pygments are installed, as they are with this package: rich.progress,
    rich.syntax, pygments, ~40-60 ms of every `railyard` command's start for a module it never runs
    (docs/performance.md item 46). httpx handles its absence (`httpx.main` then says its CLI extras are missing);
    the `httpx` console script, `python -m httpx` and a later `import httpx._main` are not affected. Done only in
    the `railyard` command's process, not where the SDK is imported."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname == "httpx._main":
            raise ModuleNotFoundError("httpx's command line client is not used by railyard_client", name=fullname)


def _in_the_railyard_command() -> bool:
    """This process is the `railyard` console script or `python -m railyard_client.cli` (the package is imported
    while `-m` locates the module: `__main__` is not it yet, and `sys.argv[0]` is "-m", so the interpreter's own
    command line says)."""
    argv = getattr(sys, "argv", None) or [""]
    orig = list(getattr(sys, "orig_argv", []))
    module = orig[orig.index("-m") + 1] if "-m" in orig[:-1] else None
    return Path(argv[0]).name == "railyard" or module == "railyard_client.cli"


def _import_httpx() -> Any:
    if "httpx" in sys.modules or not _in_the_railyard_command():
        # Only the `railyard` command goes without httpx's command line: an SDK user's process keeps httpx whole
        import httpx

        return httpx
    finder = _WithoutHttpxCommandLine()
    sys.meta_path.insert(0, finder)
    try:
        import httpx
    finally:
        sys.meta_path.remove(finder)
    return httpx


httpx = _import_httpx()

TOKEN_PATH = "/auth/realms/master/protocol/openid-connect/token"
LOGOUT_PATH = "/auth/realms/master/protocol/openid-connect/logout"
LOGOUT_TIMEOUT = 10.0
"""Seconds `railyard logout` waits for the server to end the session before it forgets the tokens all the same."""
SIGN_IN_KEYS = ("url", "client_id", "client_secret", "username", "access_token", "refresh_token", "expires_at",
                "workspace")
"""The credentials file's keys of its one sign-in (Session.credentials, and a file's old single `workspace` choice):
what `railyard logout` removes. Every server's and user's `workspaces` choice stays (workspace_choices)."""
API_PREFIX = "/v1/api"
# items a page of pipelines/list and assays/list asks for (the routes' most): asked whole, a list past the 8 MiB a
# bus reply carries is a 422 reply_too_large; page by page, every list reads (docs/api-paging.md)
LIST_PAGE = 1000
REFRESH_MARGIN = 30.0  # seconds before expiry at which a token is refreshed
DEFAULT_CLIENT_ID = "api-client"  # the confidential client the embedded stack creates

ENV_URL = "RAILYARD_CLIENT_URL"
ENV_USERNAME = "RAILYARD_CLIENT_USERNAME"
ENV_PASSWORD = "RAILYARD_CLIENT_PASSWORD"
ENV_CLIENT_ID = "RAILYARD_CLIENT_ID"
ENV_CLIENT_SECRET = "RAILYARD_CLIENT_SECRET"
ENV_TOKEN = "RAILYARD_CLIENT_TOKEN"
ENV_WORKSPACE = "RAILYARD_CLIENT_WORKSPACE"
ENV_CREDENTIALS = "RAILYARD_CLIENT_CREDENTIALS"
ENV_ROUTE_TIMEOUTS = "RAILYARD_CLIENT_ROUTE_TIMEOUTS"

# Seconds the gateway may take to answer the deployer's long commands with its default settings
# (services/gateway/http.py, Route.wait; docs/inference.md "How long the gateway waits"): a deploy 5 + 300 s
# (shared.settings.deploy_wait: the longer of a model check and the deployer's own bound of a deploy), a copy with
# `deploy` 305 + 8 s (shared.settings.copy_wait: a deploy's and the copy's own steps), an undeploy 5 + 20 s (their stop
# timeout), a deployment's set_model, set_shadow_model and delete 5 + 305 s (the monitoring service's own deploy or
# undeploy, which it waits deploy_wait for, and one request timeout for its lookups); plus a margin, so that the
# gateway's own answer (a 400 with the reason, or its 504) comes back before the client gives up. With the client's 60 s
# for these too, a slow deploy was a ConnectionFailed while the platform carried on deploying (a copy with `deploy`
# gave up at 80 s, where the gateway may take 313 s). The gateway's other long-running routes (a deployment's
# predict, predict_bytes, monitor, monitor_bytes and get_stats, an upload from a registry, an interactive assay run, the
# benchmarks and collect_objects) wait 5 + 300 s (registry.worker_timeout): the client gave up on them at 60 s too.
# A deployment's setup_continuous_training waits 5 + 65 s (its lookups, and the first ML backend set-up of a workspace
# registering the built-in training orchestration, which the task scheduler checks).
# Every other route waits Client(timeout); a larger Client(timeout) wins here too. A server whose gateway waits longer
# (a larger deployer.ready_timeout or registry.worker_timeout) is met with Client(route_timeouts=) or
# RAILYARD_CLIENT_ROUTE_TIMEOUTS (`read_route_timeouts`), which replace these per route.
_LONG_RUNNING = ("deployments/predict", "deployments/predict_bytes", "deployments/monitor", "deployments/monitor_bytes",
                 "deployments/get_stats", "models/upload_from_registry", "assays/run_interactive",
                 "benchmarks/run_classification", "benchmarks/evaluate_detections", "maintenance/collect_objects")
# The uploads (multipart, and a dataset's rows), which the gateway answers once it has staged the body in object
# storage and the owning service has taken it: a model's after the registry's model check (5 + 300 s,
# registry.worker_timeout: services/gateway/http.py, _stage_and_register), a dataset's file or rows, a workspace file
# and an orchestration zip 5 + 60 s (services/gateway/lineage.py, orchestrations.py). The client's wait for the answer
# starts once it has sent the body; the gateway's staging of a very large file comes on top (Client(route_timeouts=)).
# With the client's 60 s a model whose check took longer was a ConnectionFailed while the upload carried on, and these
# calls (Session.send, not post) did not use route_timeouts at all: a wait named for them was accepted and ignored.
UPLOAD_TIMEOUTS = {"models/upload_and_convert": 315.0, "models/upload_stream": 315.0, "datasets/upload_file": 75.0,
                   "datasets/upload_rows": 75.0, "files/upload": 75.0, "orchestration/upload": 75.0}
ROUTE_TIMEOUTS = {"pipelines/deploy": 315.0, "pipelines/copy": 323.0, "pipelines/undeploy": 35.0,
                  "deployments/set_model": 320.0, "deployments/set_shadow_model": 320.0, "deployments/delete": 320.0,
                  "deployments/setup_continuous_training": 80.0,
                  **dict.fromkeys(_LONG_RUNNING, 315.0), **UPLOAD_TIMEOUTS}
# The API's POST routes a route_timeouts entry may name (without /v1/api/): a misspelt one was taken and had no effect.
# Routes with path parameters (pipelines/infer/<deployment>/<pipeline>: Pipeline.infer(timeout=)) are not named here.
_API_ROUTE_NAMES = {  # prefix: names (services/gateway; tests/unit/test_client_long_calls.py checks them)
    "admin": "get_pipeline_external_url",
    "assays": "create get_baseline get_results list run_interactive run_interactive_baseline set_active",
    "benchmarks": "compare evaluate_detections get list run_classification",
    "connections": "add_to_workspace create delete get get_by_id list remove_from_workspace",
    "datasets": ("create delete delete_file download_file get get_file_info get_rows list list_files upload_file "
                 "upload_rows"),
    "deployments": ("add_tags attach_dataset_version_to_continuous_training attach_dataset_version_to_feedback_loop "
                    "check_feedback_loop_status check_training_data_metrics_status delete "
                    "detach_dataset_version_from_continuous_training detach_dataset_version_from_feedback_loop "
                    "disable_feedback_loop disable_training_data_reference get_model_version get_prediction_image "
                    "get_shadow_model get_stats get_tags list_feedback_loop_datasets list_predictions_to_review "
                    "monitor monitor_bytes predict predict_bytes retrieve_information review_prediction set_model "
                    "set_shadow_model set_training_data setup_continuous_deployment setup_continuous_training "
                    "setup_feedback_loop toggle_continuous_deployment toggle_continuous_training toggle_feedback_loop "
                    "update"),
    "features": "list",
    "files": "delete download get_info list upload",
    "maintenance": "collect_objects",
    "models": ("attach_registry_to_workspace create_registry download get get_by_id get_config_by_id get_registry list "
               "list_registries list_registry_model_version_artifacts list_registry_models list_versions "
               "remove_registry_from_workspace upload_and_convert upload_from_registry upload_stream"),
    "orchestration": "list upload",
    "pipelines": "copy create deploy get get_logs list list_quarantined_logs set_log_retention undeploy",
    "projects": "create create_version delete get list list_versions restore_version verify_version",
    "status": "get_deployment",
    "task": "get_by_id get_logs_for_run get_tasks_by_orch_sha kill list list_task_runs run_once run_scheduled",
    "users": "activate deactivate invite query update_password",
    "workflow": ("add_input_dataset add_input_file add_input_folder add_input_job add_input_project add_input_task "
                 "add_output_app add_output_dataset add_output_file add_output_folder add_output_job "
                 "add_output_project add_output_task graph"),
    "workspaces": ("add_user create create_inference_client list list_inference_clients list_users remove_user "
                   "revoke_inference_client"),
}
API_ROUTES = frozenset(f"{prefix}/{name}" for prefix, names in _API_ROUTE_NAMES.items() for name in names.split())


def read_route_timeouts(given: Mapping[str, float] | None = None,
                        env: Mapping[str, str] | None = None) -> dict[str, float]:
    """The seconds each route waits at least (`Session.wait_for`): ROUTE_TIMEOUTS, with the routes of
    RAILYARD_CLIENT_ROUTE_TIMEOUTS (`route=seconds` pairs, comma-separated: `pipelines/deploy=900,pipelines/copy=910`)
    replaced, then those of `given` (Client(route_timeouts=), a mapping). Each names one of the API's POST routes
    without path parameters (`API_ROUTES`, with or without `/v1/api/`); an inference route
    (`pipelines/infer/<deployment>/<pipeline>`) cannot be named: give Pipeline.infer its `timeout`. An unknown route
    (a misspelt one had no effect), a `given` that is not a mapping, or a value that is not a positive number of
    seconds is a ConfigurationError naming it."""
    if given is not None and not isinstance(given, Mapping):
        raise ConfigurationError(f"route_timeouts must be a mapping of route to seconds (e.g. "
                                 f'{{"pipelines/deploy": 900}}), not {type(given).__name__}')
    env = os.environ if env is None else env
    waits = dict(ROUTE_TIMEOUTS)
    raw = (env.get(ENV_ROUTE_TIMEOUTS) or "").strip()
    for pair in filter(None, (part.strip() for part in raw.split(","))):
        route, equals, seconds = pair.partition("=")
        if not equals:
            raise ConfigurationError(f"{ENV_ROUTE_TIMEOUTS}: {pair!r} is not route=seconds (e.g. "
                                     "pipelines/deploy=900,pipelines/copy=910)")
        name = _route_name(route, ENV_ROUTE_TIMEOUTS)
        waits[name] = _seconds(seconds.strip(), f"{ENV_ROUTE_TIMEOUTS}: {name}")
    for route, seconds in (given or {}).items():
        waits[_route_name(route, "route_timeouts")] = _seconds(seconds, f"route_timeouts[{route!r}]")
    return waits


def _route_name(route: Any, where: str) -> str:
    name = route.strip().strip("/") if isinstance(route, str) else ""
    if name.startswith("v1/api/"):
        name = name[len("v1/api/"):]
    if not name:
        raise ConfigurationError(f"{where}: {route!r} is not a route name (e.g. pipelines/deploy)")
    if name not in API_ROUTES:
        if name.startswith("pipelines/infer/"):
            raise ConfigurationError(f"{where}: {route!r} cannot be given a timeout here: give Pipeline.infer its "
                                     "timeout")
        close = difflib.get_close_matches(name, sorted(API_ROUTES), n=3)
        raise ConfigurationError(f"{where}: {route!r} is not a route of the API"
                                 + (f" (did you mean {' or '.join(close)}?)" if close else "")
                                 + "; railyard_client.session.API_ROUTES lists the routes (the API's POST routes "
                                   "without path parameters)")
    return name


def _seconds(value: Any, where: str) -> float:
    try:
        seconds = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigurationError(f"{where}: {value!r} is not a positive number of seconds")
    return seconds


def credentials_path() -> Path:
    """The credentials file `railyard login` writes and `Client()` reads."""
    if os.environ.get(ENV_CREDENTIALS):
        return Path(os.environ[ENV_CREDENTIALS]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "railyard" / "credentials.json"


class UnsafeCredentials(ConfigurationError):
    """The credentials file is another user's, or others may write it (POSIX): it is not read (`read_credentials`)."""


def read_credentials(path: Path | None = None, *, checked: bool = True) -> dict[str, Any]:
    """The saved credentials, or {} when there are none (or the file is unreadable, or no regular file).
    UnsafeCredentials (a ConfigurationError) for a file that is not the current user's or that its group or others
    may write (POSIX; ssh's rule for a key): whoever can write it chooses the server the session's tokens and client
    secret are sent to, and the user its commands run as (your models uploaded to their workspace). Our own saves
    write it 0600 (`write_credentials`). Checked on the file opened (its descriptor), not on the name: a file another
    user put in its place is theirs, and refused. Decision: a folder others may write (no sticky bit) is not refused:
    a file replaced there is the replacer's (refused), and a save writes a new file of ours (0600) over the name.
    `checked=False`: read as is (`railyard login` reads the embedded stack's secrets.json and run/stack.json so, the
    server's files, in the folders `railyard up` makes its own: 0711 and 0700)."""
    path = path or credentials_path()
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):  # os.devnull (`railyard login`'s session saves nothing), a folder
                return {}
            if checked:
                refuse_unsafe_credentials(path, info)
            data = json.loads(handle.read())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def refuse_unsafe_credentials(path: Path, info: os.stat_result, what: str = "the credentials file",
                              risk: str = "the file's writer chooses the server your tokens and client secret are"
                              " sent to and the user you run as",
                              remedy: str = "remove it and run `railyard login` again") -> None:
    """UnsafeCredentials when the credentials file `info` describes is not this user's, or its group or others may
    write it; nothing where there are no POSIX owners (Windows). Before session 42 it was read whatever its owner
    and mode, at start and, since aaf10f6b, again mid-run (`Session._take_newer_sign_in`). `what`, `risk`, `remedy`:
    the words for another file held to the same rule (the lock file beside it, `_credentials_lock`)."""
    getuid = getattr(os, "getuid", None)
    if os.name != "posix" or getuid is None:
        return
    if info.st_uid != getuid():
        raise UnsafeCredentials(f"refusing {what} {path}: it is another user's (uid {info.st_uid}, you"
                                f" are {getuid()}) and {risk}; {remedy}")
    writable = [who for who, bit in (("its group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if info.st_mode & bit]
    if writable:
        raise UnsafeCredentials(f"refusing {what} {path}: {' and '.join(writable)} may write it (mode "
                                f"{stat.S_IMODE(info.st_mode):04o}) and {risk}; `chmod 600 {path}` (railyard login"
                                " writes it 0600)")


TEMPORARY_PREFIX = ".credentials-"
"""The start of the name of write_credentials' temporary file, beside the credentials file (mkstemp adds 8 letters,
digits or underscores)."""
TEMPORARY_NAME = re.compile(re.escape(TEMPORARY_PREFIX) + r"[a-z0-9_]{8}")
STALE_TEMPORARY = 60.0
"""Seconds after which a temporary file of write_credentials found beside the credentials file is a dead write's
(`sweep_stale_temporaries`): a write takes milliseconds."""


def write_credentials(data: dict[str, Any], path: Path | None = None) -> Path:
    """Write the credentials file atomically, readable by its owner only (0600): a temporary file beside it, renamed
    over it. The temporary file holds the tokens too: it is removed when anything fails before its rename (a value
    JSON cannot hold, a full disk, a Ctrl-C), and one a killed process left is removed by the next write once it is
    STALE_TEMPORARY old (`sweep_stale_temporaries`). Before, each such failure left a `.credentials-XXXXXXXX` with
    the tokens in the config folder for good. The age is read against the folder's own clock (the new temporary
    file's time stamp), not this process's: on a home shared between hosts (NFS) the file server stamps the files,
    and a host whose clock ran a minute ahead of it took another host's write under way for a dead one."""
    path = path or credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=TEMPORARY_PREFIX)  # mkstemp creates it 0600
    try:
        sweep_stale_temporaries(path.parent, now=os.fstat(fd).st_mtime)  # ours is 0 s old by that clock: kept
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return path


def sweep_stale_temporaries(folder: Path, now: float | None = None) -> None:
    """Remove write_credentials' temporary files in `folder` (their name: TEMPORARY_NAME) older than STALE_TEMPORARY
    and this user's, left by a process killed between their creation and their rename. A younger one may be another
    process's write under way and is left; so is anything that is not a regular file. Nothing is raised. `now`: the
    folder's clock (write_credentials gives its new temporary file's time stamp); this process's when None."""
    now = time.time() if now is None else now
    uid = getattr(os, "getuid", lambda: None)()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if not TEMPORARY_NAME.fullmatch(entry.name):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if (stat.S_ISREG(info.st_mode) and now - info.st_mtime > STALE_TEMPORARY
                    and (uid is None or info.st_uid == uid)):
                os.unlink(entry.path)
        except OSError:
            continue


_LOCK_FILE_WORDS = ("the lock file", "whoever can open it can stop every save of the credentials file beside it",
                    "remove it, or keep the credentials in a folder of your own")
"""What `refuse_unsafe_credentials` says of the credentials file's lock (`_credentials_lock`)."""


@contextlib.contextmanager
def _credentials_lock(path: Path) -> Iterator[None]:
    """Held around a read, change and write of the credentials file (an exclusive flock of a `.lock` file beside it),
    so that two `railyard` processes changing it at once do not undo each other's change. Nothing where flock is not
    (Windows) or the lock file cannot be made (a read-only folder: the write then fails as before).

    The lock file is held to the credentials file's rule (`refuse_unsafe_credentials`, on the descriptor opened, not
    followed if it is a symbolic link): UnsafeCredentials when it is another user's or its group or others may write
    it. Whoever can open it can flock it, and until session 43 one made by another user in a folder others may write
    (RAILYARD_CLIENT_CREDENTIALS in a shared folder) and held there stopped every save for good: `railyard login`
    hung, and a refresh's save waited with the session's lock held."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock = path.with_name(path.name + ".lock")
    with contextlib.suppress(OSError):  # an unsafe credentials file is said first, the lock beside it second
        refuse_unsafe_credentials(path, os.stat(path))  # (read_credentials checks the file it opens, under the lock)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symbolic link put in its place: its target is someone's choice
            raise UnsafeCredentials(f"refusing the lock file {lock}: it is a symbolic link; remove it") from None
        with contextlib.suppress(OSError):  # one there that this user may not open: another user's is refused too
            refuse_unsafe_credentials(lock, os.lstat(lock), _LOCK_FILE_WORDS[0],  # (every save went on unlocked)
                                      "you may not open it, so every save of the credentials file beside it would "
                                      "go on unlocked", _LOCK_FILE_WORDS[2])
        yield
        return
    opened_by = os.getpid()
    try:
        refuse_unsafe_credentials(lock, os.fstat(handle), *_LOCK_FILE_WORDS)
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        # released explicitly, then closed: a flock belongs to the open file, which the copy of the descriptor in a
        # child forked meanwhile (another thread's fork) kept locked after this close alone, so that child's save
        # waited for ever and this process's next one for as long as the child lived (session 43's review). Not by
        # a child forked inside this block: its unlock would release the parent's lock mid-save
        if os.getpid() == opened_by:
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_UN)
        os.close(handle)


def update_credentials(change: Callable[[dict[str, Any]], dict[str, Any] | None], path: Path | None = None) -> Path:
    """Write `change(saved)` over the saved credentials (None: leave them), the file read and written under a lock:
    a `workspaces use` and another process's token refresh at the same moment each read the file before the other
    wrote it, and the second write undid the first (the choice gone, or a spent refresh token written back over the
    new one: "the session expired")."""
    path = path or credentials_path()
    with _credentials_lock(path):
        changed = change(read_credentials(path))
        if changed is not None:
            write_credentials(changed, path)
    return path


def save_sign_in(signed_in: dict[str, Any], path: Path | None = None) -> Path:
    """Write a new sign-in (`Session.credentials()`: URL, client, user, tokens) over the file's, under its lock, every
    server's and user's `workspaces use` choice kept (an old file's single choice as its user's): what `railyard
    login` saves, the client's command and the server module's (`python -m shared.cli login`) alike."""
    return update_credentials(lambda saved: signed_in | ({"workspaces": choices} if (
        choices := workspace_choices(saved)) else {}), path)


def save_refreshed(replaced: tuple[Any, Any], tokens: dict[str, Any], path: Path | None = None) -> Path:
    """Write refreshed `tokens` (access_token, refresh_token, expires_at) into the file, under its lock, over the
    sign-in whose access and refresh tokens were `replaced` only: a file that holds others since (another `railyard
    login` while this refresh ran) is another sign-in's, left as it is. Everything else the file holds is kept as it
    is now (a `workspaces use` choice saved meanwhile included). `Session` (a file's session refreshed) and `python -m
    shared.cli token` write through it."""
    return update_credentials(lambda saved: saved | tokens if (
        saved.get("access_token"), saved.get("refresh_token")) == tuple(replaced) else None, path)


def end_saved_session(saved: Mapping[str, Any], timeout: float = LOGOUT_TIMEOUT) -> str | None:
    """End the sign-in session of the credentials file's refresh token at its server (the gateway's logout endpoint,
    as Keycloak's: the client authenticated, the form's refresh_token): that refresh token and every token of its
    session stop working there. None when the server ended it (or there is no refresh token to end), else why not,
    for a warning: the caller forgets the tokens either way."""
    url, refresh = saved.get("url"), saved.get("refresh_token")
    if not (url and refresh):
        return None
    client_id = str(saved.get("client_id") or DEFAULT_CLIENT_ID)
    secret = saved.get("client_secret")
    form = {"refresh_token": str(refresh)} | ({} if secret else {"client_id": client_id})  # a public client: its id
    try:
        response = httpx.post(normalize_url(str(url)) + LOGOUT_PATH, data=form, timeout=timeout,
                              auth=(client_id, str(secret)) if secret else None)
    except ConfigurationError as exc:
        return str(exc)
    except httpx.HTTPError as exc:
        return f"cannot reach {url}: {exc or type(exc).__name__}"
    if response.status_code in (200, 204):
        return None
    body = _json_or_none(response)
    said = (body.get("error_description") or body.get("msg") or body.get("error")) if isinstance(body, dict) else None
    return f"{url} answered {response.status_code}" + (f": {said}" if said else "")


def forget_sign_in(path: Path | None = None, refresh_token: str | None = None) -> bool:
    """Remove the credentials file's sign-in (SIGN_IN_KEYS), under its lock: what stays is every server's and user's
    workspace choice (an old file's single choice kept as its user's, workspace_choices) and anything else it holds;
    a file left with nothing is removed. With `refresh_token`, only a sign-in that still holds it is removed, checked
    under the lock: `railyard logout` reads the file, then waits up to LOGOUT_TIMEOUT for the server, and a `railyard
    login` (as another user, say) that wrote its sign-in meanwhile lost its tokens to the removal. The same sign-in
    refreshed meanwhile (another `railyard` process: a new refresh token of the same session) is still removed
    (same_sign_in). False when the file held another sign-in (left as it is)."""
    path = path or credentials_path()
    with _credentials_lock(path):
        saved = read_credentials(path)
        if refresh_token is not None and not same_sign_in(saved.get("refresh_token"), refresh_token):
            return False
        choices = workspace_choices(saved)
        kept = {key: value for key, value in saved.items() if key not in SIGN_IN_KEYS and key != "workspaces"}
        kept |= {"workspaces": choices} if choices else {}
        if kept:
            write_credentials(kept, path)
        else:
            path.unlink(missing_ok=True)
    return True


def same_sign_in(held: Any, read: str) -> bool:
    """Whether the credentials file's refresh token `held` is of the sign-in whose refresh token was `read`: the same
    token, or one of the same session (its `session_state`, read without checking the token). A token refreshed by
    another `railyard` process while `railyard logout` asked the server is a new one of the same session: kept as
    another sign-in's, the file went on holding the tokens of the session signed out of (working ones when the server
    was not reached), and logout said it kept a sign-in saved meanwhile."""
    if held == read:
        return True
    session = _claims(read).get("session_state")
    return bool(session) and _claims(held).get("session_state") == session


def _claims(token: Any) -> dict[str, Any]:
    """A JWT's claims, read without checking it ({} for what is not one)."""
    try:
        payload = str(token).split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def token_user(token: str | None) -> str | None:
    """The username a JWT access token names (its `preferred_username`), read without checking the token: only to
    keep a workspace choice per user (the server checks the token on every call). None for a token that is not a
    JWT or names nobody."""
    try:
        payload = str(token).split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        name = claims.get("preferred_username")
    except (IndexError, ValueError, AttributeError):
        return None
    return str(name) if name else None


def workspace_choices(saved: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The credentials file's workspace choices, `{server URL: {username: workspace id}}` ("" for a sign-in that
    names no user). A file written before the choices were per user (one `workspace` for its `url` and its signed-in
    user: the name its access token carries, else its `username`) is read as that user's choice on that server."""
    kept = saved.get("workspaces")
    choices = {url: dict(users) for url, users in kept.items() if isinstance(users, dict)} if isinstance(
        kept, dict) else {}
    if saved.get("workspace") is not None and saved.get("url"):
        try:
            url = normalize_url(str(saved["url"]))
        except ConfigurationError:
            return choices
        user = token_user(saved.get("access_token")) or saved.get("username") or ""
        choices.setdefault(url, {}).setdefault(str(user), saved["workspace"])
    return choices


def saved_choice(saved: dict[str, Any], url: str, user: str | None) -> Any:
    """The workspace chosen for `user` on the server at `url` in the credentials `saved`, or None. A user with no
    choice of their own there has the one made by a sign-in that named no user (""): a file the previous version
    wrote signed in by the variables holds only the server and its choice, which that version read for whoever
    signed in to that server (read as nobody's, the choice was lost on the upgrade)."""
    choices = workspace_choices(saved).get(url, {})
    return choices.get(user or "", choices.get(""))


def with_choice(saved: dict[str, Any], url: str, user: str | None, workspace: Any) -> dict[str, Any]:
    """The credentials `saved` with `workspace` chosen for `user` on the server at `url` (every other server's and
    user's choice kept; a file of the old form rewritten in the new one)."""
    choices = workspace_choices(saved)
    choices.setdefault(url, {})[user or ""] = workspace
    return {key: value for key, value in saved.items() if key != "workspace"} | {"workspaces": choices}


def normalize_url(url: str) -> str:
    """`http://host:port` from any of `http://host:port[/][v1/api]`."""
    url = url.strip().rstrip("/")
    url = url.removesuffix(API_PREFIX)
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"the server URL must start with http:// or https:// (got {url!r})")
    return url


def repeated_cursor(route: str, cursor: Any, seen: set[str]) -> None:
    """Raise when a paged list answers a cursor it answered before (a server or proxy that does not advance): the
    loop that follows the cursors would ask for the same pages for ever. Else remember it."""
    if str(cursor) in seen:
        raise RailyardError(f"{route}: the server answered cursor {cursor!r} again; stopped rather than read the same "
                            "pages for ever", code="repeated_cursor")
    seen.add(str(cursor))


def non_finite(value: Any, path: str = "") -> str | None:
    """Where in a JSON body a NaN or infinity is (`baseline.Static.values[3]`), None when there is none: JSON has no
    form for them, and httpx's encoder refused such a body with a bare ValueError ("Out of range float values are not
    JSON compliant") that named neither the field nor the SDK's error family."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path or "the body")
    if isinstance(value, dict):
        items: Any = ((f"{path}.{key}" if path else str(key), item) for key, item in value.items())
    elif isinstance(value, list | tuple):
        items = ((f"{path}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    for where, item in items:
        found = non_finite(item, where)
        if found is not None:
            return found
    return None


def refuse_non_finite(body: Any) -> None:
    """InvalidInput naming where a NaN or infinity is in a JSON body (`non_finite`); nothing when there is none."""
    where = non_finite(body)
    if where is not None:
        raise InvalidInput(f"{where} is NaN or infinite, which JSON cannot carry: leave the value out or give a "
                           "finite number")


class TokensNotSaved(UserWarning):
    """The refreshed tokens of a session that came from the credentials file could not be written back to it (a full
    disk, a read-only folder): the session goes on with them in memory, and a later command needs `railyard login`
    again unless a later refresh of the session can write them. `path` is the file, `error` the OSError of the write;
    `Client.tokens_not_saved` gives one for as long as it holds. A program silences it by this category
    (`warnings.filterwarnings("ignore", category=TokensNotSaved)`), not by `module="railyard_client"`: it is shown at
    the program's line that led to the refresh."""

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(f"the refreshed tokens could not be saved in {path} ({error}); they are used until this"
                         " session ends, but run `railyard login` again once the file can be written")
        self.path, self.error = path, error

    def __reduce__(self) -> tuple[type[TokensNotSaved], tuple[Path, OSError]]:
        # made again from its file and error: BaseException's own (the class called with `args`, the message alone)
        # raised TypeError at copy.copy and at unpickling (one raised under `-W error` in a ProcessPoolExecutor's
        # worker, a warning a library copies)
        return type(self), (self.path, self.error)


def _warn_each_time(warning: Warning) -> None:
    """`warnings.warn(warning)` at the first caller outside this package (the SDK user's line that led to it), shown
    each time the filters let it through: `warnings.warn` records each place and text it showed in the caller's
    module, so its default filter showed a TokensNotSaved once per process whatever happened after (a second failure
    of the same file with the same error, after a refresh that saved, or another Client's, was silent). A filter
    the program sets (`ignore`, `error`, `once`, `always`) applies as to any warning."""
    frame = sys._getframe(1)
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame = frame.f_back
    warnings.warn_explicit(warning, type(warning), frame.f_code.co_filename, frame.f_lineno,
                           module=frame.f_globals.get("__name__"), registry=None, module_globals=frame.f_globals)


_SESSIONS: weakref.WeakSet[Session] = weakref.WeakSet()
"""The process's live sessions, whose refresh locks a forked child makes new (`_new_refresh_locks`)."""


def _new_refresh_locks() -> None:
    """In the child of a fork, each session's refresh lock made new: a lock another thread of the parent held at the
    fork (a refresh under way: its HTTP call, its save) stays held in the child by a thread the child does not have,
    so until session 43 the child's first refresh (a token that had expired, or a call the server refused) waited for
    ever. A child gets a copy of the session as it was (tokens included) and refreshes on its own. (The credentials
    file's lock, held through a refresh's save, is a flock the parent's thread releases explicitly for the child's
    copy too: `_credentials_lock`.)"""
    for session in list(_SESSIONS):
        session._refreshing = threading.RLock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_new_refresh_locks)


class Session:
    """One authenticated connection to a gateway: tokens (refreshed when needed) and typed-error HTTP calls."""

    def __init__(self, url: str | None = None, *, username: str | None = None, password: str | None = None,
                 client_id: str | None = None, client_secret: str | None = None, token: str | None = None,
                 credentials_file: str | Path | None = None, timeout: float | httpx.Timeout | None = 60.0,
                 route_timeouts: Mapping[str, float] | None = None) -> None:
        env = os.environ
        # one refresh at a time (`refresh`): threads sharing the session each refreshed its expired token, every one
        # of them with the same single-use refresh token. Reentrant: a warning hook of the program that asks for a
        # token in the thread refreshing does not wait for itself
        self._refreshing = threading.RLock()
        _SESSIONS.add(self)  # made new in a forked child (`_new_refresh_locks`)
        # refreshes ended (under the lock), and the last one's error (None when it worked): a thread that waited
        # through a failed refresh raises its error rather than make the same grant again (`_refresh_unless_replaced`)
        self._refreshes_ended = 0
        self._refresh_failed: RailyardError | None = None
        self.route_timeouts = read_route_timeouts(route_timeouts, env)  # refused before anything is sent
        self.credentials_file = Path(credentials_file).expanduser() if credentials_file else credentials_path()
        saved = self.saved = read_credentials(self.credentials_file)
        url = url or env.get(ENV_URL) or saved.get("url")
        if not url:
            raise ConfigurationError(f"not logged in (no server URL): run `railyard login`, set {ENV_URL} or "
                                     "pass Client(url)")
        self.url = normalize_url(url)
        same_server = bool(saved) and normalize_url(str(saved.get("url", "http://x"))) == self.url
        saved = saved if same_server else {}
        # who signs in comes from the arguments as a whole when any is given (an inference client's id and
        # secret must not pick up a user from the environment); the client's id and secret fall back one by one
        from_env = not any(v is not None for v in (username, password, token, client_id))
        self.username = username or (env.get(ENV_USERNAME) if from_env else None)
        self.password = password or (env.get(ENV_PASSWORD) if from_env else None)
        token = token or (env.get(ENV_TOKEN) if from_env else None)
        self.client_id = client_id or env.get(ENV_CLIENT_ID) or saved.get("client_id") or DEFAULT_CLIENT_ID
        # the saved tokens and secret belong to the saved client: another client (an inference client's id, given
        # or in the environment) must not run as the saved user, nor borrow its secret
        same_client = self.client_id == (saved.get("client_id") or DEFAULT_CLIENT_ID)
        self.client_secret = client_secret or env.get(ENV_CLIENT_SECRET) or (
            saved.get("client_secret") if same_client else None)
        self.timeout = timeout
        self.http = httpx.Client(base_url=self.url, timeout=timeout)
        self.access_token: str | None = token
        self.refresh_token: str | None = None
        self.expires_at = float("inf")  # a given token is used as is until the server refuses it
        self.persist = False
        self.client_only = False
        # the access and refresh tokens the file holds as far as this session knows (read, or written last): a
        # refresh writes over these only; when a write failed they stay the file's, and a later refresh writes there
        self.in_file: tuple[str | None, str | None] = (None, None)
        self.unsaved: OSError | None = None  # why the last write of the refreshed tokens failed; None once one works
        if self.access_token:
            return
        explicit_client = bool((client_id or env.get(ENV_CLIENT_ID)) and self.client_secret)
        # the saved tokens are the saved user's: a username given (or in the environment) without its password must
        # not run as someone else
        same_user = not self.username or self.username == saved.get("username")
        if self.username and self.password:
            self.login(self.username, self.password)
        elif not same_user:
            raise ConfigurationError(
                f"no password for {self.username!r}: pass password (or set {ENV_PASSWORD}), or run `railyard login "
                f"--username {self.username}`" + (f" (the saved tokens are {saved['username']!r}'s)"
                                                   if saved.get("username") else ""))
        elif explicit_client and not (same_client and saved.get("access_token")):
            self.login_client()  # an inference client: client_credentials tokens, inference routes only
        elif same_client and saved.get("access_token"):
            self.access_token = saved["access_token"]
            self.refresh_token = saved.get("refresh_token")
            self.expires_at = float(saved.get("expires_at") or 0)
            self.username = saved.get("username")
            self.persist = True
            self.in_file = (self.access_token, self.refresh_token)
        else:
            raise ConfigurationError(
                f"not logged in to {self.url}: pass username and password, set {ENV_USERNAME} and {ENV_PASSWORD}"
                f" (or {ENV_TOKEN}), or run `railyard login`")

    # --- tokens ------------------------------------------------------------------------------------

    def _grant(self, form: dict[str, str]) -> dict[str, Any]:
        if not self.client_secret:
            raise ConfigurationError(f"no client secret: pass client_secret or set {ENV_CLIENT_SECRET}")
        try:
            response = self.http.post(TOKEN_PATH, data=form, auth=(self.client_id, self.client_secret))
        except httpx.HTTPError as exc:
            raise ConnectionFailed(f"cannot reach {self.url}: {exc}") from None
        body = _json_or_none(response)
        if response.status_code != 200:
            raise error_from_answer(response.status_code, body)
        # the expiry before the token: a thread reading them without the lock (`token`) that sees the new token sees
        # its expiry too, and does not take it for the expiring one it replaces
        self.expires_at = time.time() + float(body.get("expires_in", 300))
        self.refresh_token = body.get("refresh_token")
        self.access_token = body["access_token"]
        self._save()
        return body

    def login(self, username: str, password: str) -> None:
        """Sign in with the password grant; keeps the access and refresh tokens."""
        self.username, self.password = username, password
        self._grant({"grant_type": "password", "username": username, "password": password})

    def login_client(self) -> None:
        """Sign in as the client itself (client_credentials grant); renewed the same way when it expires."""
        self.client_only = True
        self._grant({"grant_type": "client_credentials"})

    def refresh(self) -> None:
        """A new access token from the refresh token (or the password, when the refresh token expired). One at a time
        per session (a lock): a refresh token works once, and threads sharing a session whose token had expired each
        refreshed it with the same one (8 threads: 8 grants, 7 of them refused by the server, those threads' calls
        failing, a server that rotates refresh tokens may end the session). `token` and a refused call's retry
        refresh only when no other thread did while they waited (`_refresh_unless_replaced`)."""
        with self._refreshing:
            self._refresh_counted()

    def _refresh_unless_replaced(self, held: str | None) -> None:
        """Refresh the access token `held` (the expiring one, or one the server refused), unless another thread
        replaced it while this one waited for the lock: the waiting thread then uses the refreshed token rather
        than spend the new refresh token again. A refresh that failed while it waited is that refresh's error here
        too (as a Future's result is in each thread that waits on it): each waiting thread made the grant again after
        it, one after another under the lock, so with the server not answering 8 threads' last call failed after 8
        timeouts of the client's (8 minutes), where each thread's own grant had failed after one."""
        ended = self._refreshes_ended  # read before the wait: a refresh ended since is one this thread waited for
        with self._refreshing:
            if self.access_token != held:
                return
            failed = self._refresh_failed
            if failed is not None and self._refreshes_ended != ended:
                raise failed
            self._refresh_counted()

    def _refresh_counted(self) -> None:
        """`_refresh`, under the lock, its end counted and its error kept for the threads that waited on it."""
        failed: RailyardError | None = None
        try:
            self._refresh()
        except RailyardError as exc:
            failed = exc
            raise
        finally:
            self._refreshes_ended += 1
            self._refresh_failed = failed

    def _refresh(self) -> None:
        if self.client_only:
            self._grant({"grant_type": "client_credentials"})
            return
        if self.refresh_token:
            try:
                self._grant({"grant_type": "refresh_token", "refresh_token": self.refresh_token})
                return
            except AuthenticationError:
                if self._take_newer_sign_in():
                    return
                if not (self.username and self.password):
                    raise AuthenticationError(401, "unauthorized",
                                              "the session expired: run `railyard login` again") from None
        if self.username and self.password:
            self.login(self.username, self.password)
            return
        raise AuthenticationError(401, "unauthorized", "the token expired or was refused and cannot be refreshed")

    def _take_newer_sign_in(self) -> bool:
        """After the server refused this session's refresh token: take the credentials file's tokens when another
        process (a second `railyard` command, a notebook's Client on the same file) refreshed them since, i.e. the
        file holds other tokens than this session read or wrote last (`in_file`), of the same server, user and client,
        with the file's client secret when it holds one (that sign-in's: this session's may have been rotated since);
        refreshed at once when they are about to expire. Both processes read the same single-use refresh token: the
        first to refresh spent it, and the other said "the session expired: run `railyard login` again" while the file
        held a valid sign-in. False (nothing taken) for a session not from the file, or a file holding none, the
        same tokens, another sign-in's, or ones the server refuses too."""
        if not self.persist:
            return False
        saved = read_credentials(self.credentials_file)
        tokens = (saved.get("access_token"), saved.get("refresh_token"))
        if not all(tokens) or tokens == self.in_file or tokens[1] == self.refresh_token:
            return False
        try:
            same_server = normalize_url(str(saved.get("url") or "")) == self.url
        except ConfigurationError:
            return False
        if not (same_server and saved.get("username") == self.username
                and (saved.get("client_id") or DEFAULT_CLIENT_ID) == self.client_id):
            return False
        if saved.get("client_secret"):  # the secret of the sign-in that wrote them: this one's may have been rotated
            self.client_secret = str(saved["client_secret"])
        try:
            self.expires_at = float(saved.get("expires_at") or 0)
        except (TypeError, ValueError):
            self.expires_at = 0.0
        self.refresh_token, self.access_token = tokens[1], tokens[0]
        self.in_file, self.unsaved = tokens, None  # the file's own: nothing of this session's left unsaved
        if time.time() > self.expires_at - REFRESH_MARGIN:
            try:
                self._grant({"grant_type": "refresh_token", "refresh_token": self.refresh_token})
            except AuthenticationError:
                return False
        return True

    def can_refresh(self) -> bool:
        """Whether a refused token can be replaced without asking the user."""
        return bool(self.refresh_token or (self.username and self.password) or self.client_only)

    @property
    def token(self) -> str:
        """A valid access token, refreshed when it is about to expire (once for every thread waiting on it:
        `refresh`)."""
        held = self.access_token
        if held is None or time.time() > self.expires_at - REFRESH_MARGIN:
            self._refresh_unless_replaced(held)
        token = self.access_token
        assert token is not None
        return token

    @property
    def user(self) -> str | None:
        """Who the session signs in as: the username its access token names, else the username it signed in with
        (None for a token that names nobody)."""
        return token_user(self.access_token) or self.username

    @property
    def saved_workspace(self) -> Any:
        """The workspace `railyard workspaces use` chose for this server and user (None when none was): another
        user's choice on the same server is not theirs (their commands ran in it, or failed as not a member). Read
        from the credentials file as it is now: a `railyard workspaces use` run since this session started counts."""
        self.saved = read_credentials(self.credentials_file)
        return saved_choice(self.saved, self.url, self.user)

    def _save(self) -> None:
        """The refreshed tokens written back to the file the session came from, over `in_file` (the access and
        refresh tokens it read or wrote last) only: a file that holds others since (another user's or another
        server's `railyard login` while this session ran) is another sign-in's, left as it is (before, it got this
        session's tokens under that sign-in's username, and its next commands ran as this session's user).

        A write that fails (OSError: a full disk, a read-only folder, its permissions) is not raised: the session
        keeps the tokens it was given, which are the only valid ones (the refresh spent the file's refresh token),
        records why in `unsaved` and warns (TokensNotSaved) when the tokens go from saved to not saved, not again
        until a write has worked (`_warn_each_time`: each such change is shown); `in_file` stays the file's, so a
        later refresh writes over them once the file can be written. Before, the OSError came out of the call that
        refreshed and the new tokens were lost with it: signed out."""
        if not self.persist:
            return
        try:
            save_refreshed(self.in_file, {"access_token": self.access_token, "refresh_token": self.refresh_token,
                                          "expires_at": self.expires_at}, self.credentials_file)
        except (OSError, UnsafeCredentials) as exc:
            if isinstance(exc, UnsafeCredentials):  # made unsafe since it was read: not written, said as not saved
                exc = PermissionError(str(exc))
            # recorded before it is said: a program whose filters make the warning an error (`-W error`) has it
            # raised here, and `not_saved` still says the tokens are not in the file
            was_saved, self.unsaved = self.unsaved is None, exc
            if was_saved:
                _warn_each_time(TokensNotSaved(self.credentials_file, exc))
            return
        self.in_file, self.unsaved = (self.access_token, self.refresh_token), None

    @property
    def not_saved(self) -> TokensNotSaved | None:
        """The tokens this session holds are not in the credentials file it came from (a TokensNotSaved naming the file
        and the OSError of the last write); None when they are, or when the session did not come from the file."""
        return None if self.unsaved is None else TokensNotSaved(self.credentials_file, self.unsaved)

    def credentials(self) -> dict[str, Any]:
        """What `railyard login` keeps: the URL, the client and the current tokens."""
        return {"url": self.url, "client_id": self.client_id, "client_secret": self.client_secret,
                "username": self.username, "access_token": self.access_token,
                "refresh_token": self.refresh_token, "expires_at": self.expires_at}

    # --- calls -------------------------------------------------------------------------------------

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One authenticated request (path under the server root); typed errors for error answers. A token the
        server refuses is refreshed once and the request repeated (bodies must be replayable). A POST to an API
        route without a `timeout` of its own waits as `post` does (`wait_for`: ROUTE_TIMEOUTS, route_timeouts)."""
        if method == "POST" and "timeout" not in kwargs and path.startswith(f"{API_PREFIX}/"):
            kwargs["timeout"] = self.wait_for(path[len(API_PREFIX) + 1:])
        for attempt in (0, 1):
            sent = self.token
            headers = {**kwargs.pop("headers", {}), "Authorization": f"Bearer {sent}"}
            try:
                response = self.http.request(method, path, headers=headers, **kwargs)
            except ValueError:
                refuse_non_finite(kwargs.get("json"))
                raise
            except httpx.TimeoutException:
                raise ConnectionFailed(f"{self.url} did not answer {path} in time") from None
            except httpx.HTTPError as exc:
                raise ConnectionFailed(f"cannot reach {self.url}: {exc}") from None
            kwargs["headers"] = {k: v for k, v in headers.items() if k != "Authorization"}
            if response.status_code == 401 and attempt == 0 and self.can_refresh() and "files" not in kwargs:
                self._refresh_unless_replaced(sent)  # another thread's refresh since this call was sent: its token
                continue
            if response.status_code >= 400:
                raise error_from_answer(response.status_code, _json_or_none(response))
            return response
        raise AssertionError("unreachable")

    def post(self, route: str, body: dict[str, Any] | None = None) -> Any:
        """POST /v1/api/<route> with a JSON body; the answer's JSON (None for 204). A route the gateway may take
        longer on (ROUTE_TIMEOUTS) is waited for that long."""
        route = route.strip("/")
        response = self.send("POST", f"{API_PREFIX}/{route}", json=body or {}, timeout=self.wait_for(route))
        return response.json() if response.content else None

    def post_pages(self, route: str, body: dict[str, Any], key: str | None = None) -> Iterator[Any]:
        """The items of a paged list route, a page at a time (`limit` LIST_PAGE, then `cursor` = the page's
        next cursor until a page has none): `answer[key]` and its `next_cursor` when the answer is an object
        (pipelines/list; an object keyed by id, as users/query's, yields its values), the bare list and the
        `x-next-cursor` header otherwise (assays/list). Lazy: a caller
        that stops early asks for no further page."""
        route = route.strip("/")
        asked = {**body, "limit": LIST_PAGE}
        seen: set[str] = set()
        while True:
            response = self.send("POST", f"{API_PREFIX}/{route}", json=asked, timeout=self.wait_for(route))
            answer = response.json()
            if key is None:
                items, cursor = answer, response.headers.get("x-next-cursor")
            else:
                items, cursor = answer[key], answer.get("next_cursor")
            yield from items.values() if isinstance(items, dict) else items  # users/query: users keyed by id
            if not cursor:
                return
            repeated_cursor(route, cursor, seen)
            asked = {**body, "limit": LIST_PAGE, "cursor": cursor}

    def wait_for(self, route: str) -> Any:
        """The timeout of a POST to `route`: Client(timeout) as given (seconds, None for no limit, or an
        httpx.Timeout), with the read wait raised to the route's for the gateway's long commands (ROUTE_TIMEOUTS', or
        the user's: `read_route_timeouts`)."""
        least = self.route_timeouts.get(route)
        if least is None or self.timeout is None:
            return self.timeout
        if isinstance(self.timeout, httpx.Timeout):
            read = self.timeout.read
            return httpx.Timeout(connect=self.timeout.connect, write=self.timeout.write, pool=self.timeout.pool,
                                 read=None if read is None else max(read, least))
        return max(least, self.timeout)

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
