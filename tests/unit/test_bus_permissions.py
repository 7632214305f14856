"""Each service's code against deploy/nats-permissions.json, and the rules of the bus: only auth answers `auth.>`
and announces keys and users, only engines answer inferences and publish inference logs, only the log store
answers `log_store.>`, each kind of event has one publisher, and the front-door client identity reaches nothing
it should not: every subject a service subscribes to is classified by what its handler does without a token, and
the client may publish exactly the token-checked ones. The integration twin (tests/integration/test_bus_identities.py)
tries the same on a real server."""

from __future__ import annotations

import asyncio
import importlib
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from services.log_store import deployments as log_store_deployments
from shared import bus, bus_identities, subjects
from shared.bus import CallContext
from shared.subjects import covers

REPO = Path(__file__).resolve().parents[2]
SUBJECT_FUNCTIONS = {"engine_infer": "engine.*.infer", "engine_replica_status": "engine.*.replica.*.status",
                     "health": "*.health"}


def may(identity: str, action: str, subject: str) -> bool:
    rules = bus_identities.permissions(identity)[action]
    return any(covers(p, subject) for p in rules["allow"]) and not any(
        covers(p, subject) for p in rules.get("deny", []))


def who_may(action: str, subject: str) -> set[str]:
    return {i for i in bus_identities.identities() if i != bus_identities.OPS and may(i, action, subject)}


def referenced_subjects(service: str) -> set[str]:
    """Subject values a service's code names through shared.subjects."""
    found: set[str] = set()
    for path in (REPO / "services" / service).rglob("*.py"):
        for name in re.findall(r"subjects\.([A-Za-z_]+)", path.read_text()):
            if name in SUBJECT_FUNCTIONS:
                found.add(SUBJECT_FUNCTIONS[name])
                continue
            value = getattr(subjects, name, None)
            values = value if isinstance(value, tuple) else (value,)
            for item in values:
                if isinstance(item, str) and "." in item:
                    found.add(item + ">" if item.endswith(".") else item)
    return found


@pytest.mark.parametrize("service", subjects.SERVICES)
def test_each_service_may_use_every_subject_its_code_names(service):
    consumed = bus_identities.consumes(service)
    missing = sorted(s for s in referenced_subjects(service)
                     if not (may(service, "subscribe", s) or may(service, "publish", s)
                             or any(covers(c, s) for c in consumed)))
    assert not missing, f"{service} names subjects deploy/nats-permissions.json does not give it: {missing}"


def test_only_auth_answers_auth_and_announces_keys_and_users():
    for subject in (subjects.AUTH_KEYS_GET, subjects.AUTH_TOKEN_ISSUE, subjects.AUTH_REVOCATIONS_LIST, "auth.>"):
        assert who_may("subscribe", subject) == {"auth"}, subject
    for subject in (subjects.EVENT_SIGNING_KEY_ROTATED, subjects.EVENT_TOKENS_REVOKED, subjects.EVENT_USER_DEACTIVATED,
                    subjects.EVENT_USER_CREATED, "events.auth.anything", "events.user.anything"):
        assert who_may("publish", subject) == {"auth"}, subject


def test_only_engines_answer_inferences_and_publish_inference_logs():
    assert who_may("subscribe", subjects.engine_infer("d-1")) == {"engine"}
    assert who_may("publish", "logs.inference.d-1") == {"engine"}
    # the gateway for inferences, the lineage service for benchmark runs, monitoring for predict on images
    assert who_may("publish", subjects.engine_infer("d-1")) == {"gateway", "workflow_lineage", "monitoring"}


def test_only_the_log_store_answers_log_store_subjects():
    for subject in (subjects.LOG_STORE_QUERY, subjects.LOG_STORE_READ_FIELD, subjects.LOG_STORE_MAINTENANCE):
        assert who_may("subscribe", subject) == {"log_store"}, subject


def test_each_kind_of_event_has_one_publisher():
    events = {v for k, v in vars(subjects).items() if k.startswith("EVENT_") and isinstance(v, str)}
    for event in sorted(events - {subjects.EVENT_SERVICE_STARTED}):
        event = event + "x" if event.endswith(".") else event
        publishers = who_may("publish", event) - {bus_identities.CLIENT}
        assert len(publishers) == 1, (event, publishers)


def test_the_client_identity_is_a_front_door_only():
    client = bus_identities.CLIENT
    assert not may(client, "subscribe", ">")
    assert bus_identities.permissions(client)["subscribe"]["allow"] == ["_INBOX.client.>"]
    assert not bus_identities.permissions(client)["allow_responses"]
    for subject in (subjects.AUTH_KEYS_GET, subjects.AUTH_TOKEN_ISSUE, subjects.AUTH_TOKEN_ISSUE_TASK,
                    "logs.inference.d-1", "events.user.deactivated", "events.anything.x", subjects.engine_infer("d-1"),
                    subjects.LOG_STORE_READ_FIELD, subjects.LOG_STORE_MAINTENANCE, "$JS.API.STREAM.NAMES",
                    "registry.health", "_INBOX.gateway.x"):
        assert not may(client, "publish", subject), subject
    for subject in (subjects.AUTH_USERS_QUERY, subjects.DEPLOYER_PIPELINES_DEPLOY, subjects.LOG_STORE_QUERY,
                    subjects.REGISTRY_MODELS_LIST, subjects.AUTH_KEYS_ROTATE):
        assert may(client, "publish", subject), subject


def test_replies_reach_their_own_identity_only():
    for identity in bus_identities.identities():
        inbox = f"{bus_identities.inbox_prefix(identity)}.x.y"
        assert who_may("subscribe", inbox) - {identity} == set(), identity


def test_the_container_config_is_rendered_from_the_permissions_file():
    assert bus_identities.AUTH_CONF.read_text() == bus_identities.render_authorization(), \
        "deploy/nats-auth.conf is stale: run `python -m shared.bus_identities`"


# --- the front door: which subscribed subjects verify the caller's token ------------------------------------------

# Subscriptions made outside `command(...)` (raw NATS callbacks, the runner's health) and whether their callback
# verifies a token on every call. A new one fails test_every_subscription_is_classified until it is added here.
RAW_SUBSCRIPTIONS = {
    subjects.LOG_STORE_QUERY: True,  # services/log_store/app.py: verifier.verify(token) before anything
    subjects.LOG_STORE_READ_FIELD: False,  # without a token: the assay scheduler, trusted by bus identity
    "engine.*.infer": False,  # engines trust their callers (the gateway verified the token)
    "engine.*.replica.*.status": False,  # the deployer's supervision
    "*.health": False,  # shared/service.py, every service
}


_REAL_COMMAND = bus.command


class _TokenRequired(Exception):
    """Raised by the stand-in verifier: the handler asked for the caller's token before anything else."""


class _Anything:
    """A stand-in for a handler's dependencies: reading through it works, calling anything on it fails."""

    def __getattr__(self, name: str) -> Any:
        return _Anything()

    def __getitem__(self, key: Any) -> Any:
        return _Anything()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the handler used a dependency before verifying the caller")


class _Extras(dict):
    def __missing__(self, key: str) -> Any:
        return _Anything()


class _Verifier:
    async def verify(self, token: str | None) -> Any:
        raise _TokenRequired(token)


@pytest.fixture(scope="module")
def routers() -> dict[str, Any]:
    """service -> its built router, with `found`: subject -> handler of every `command(...)` subscriber, recorded
    instead of subscribed (nothing connects)."""
    from shared.service import Runtime

    found: dict[str, Any] = {}
    built: dict[str, Any] = {}

    def recording(router: Any, subject: str, *, service: str, **options: Any) -> Any:
        def decorate(handler: Any) -> Any:
            assert subject not in found, f"{subject} has two handlers"
            found[subject] = handler
            return handler
        return decorate

    apps = [importlib.import_module(f"services.{service}.app") for service in subjects.SERVICES]
    with pytest.MonkeyPatch.context() as patch:
        for name, module in [("shared.bus", bus), *sys.modules.items()]:
            if (name == "shared.bus" or name.startswith("services.")) and getattr(module, "command", None) is \
                    _REAL_COMMAND:
                patch.setattr(module, "command", recording)
        for app in apps:
            runtime = Runtime(name=app.NAME, settings=_Anything())
            runtime.extras = _Extras(verifier=_Verifier())
            built[app.NAME] = app.SPEC.build_router(runtime)
    return {"routers": built, "commands": found}


@pytest.fixture(scope="module")
def command_handlers(routers) -> dict[str, Any]:
    """subject -> handler of every `command(...)` subscriber of every service."""
    return routers["commands"]


async def _checks_token_first(subject: str, handler: Any) -> bool:
    """Does the handler, called without a token, ask the verifier before it touches anything?"""
    model = bus._command_model(handler)
    try:
        await asyncio.wait_for(handler(model.model_construct(), CallContext(subject=subject, token=None)), 5)
    except _TokenRequired:
        return True
    except Exception:
        return False
    return False


@pytest.fixture(scope="module")
def token_checked(command_handlers) -> dict[str, bool]:
    """Every subscribed subject -> whether its handler verifies the caller's token on every call."""
    async def classify() -> dict[str, bool]:
        return {s: await _checks_token_first(s, h) for s, h in command_handlers.items()}

    return {**asyncio.run(classify()), **RAW_SUBSCRIPTIONS}


def test_every_subscription_is_classified(command_handlers):
    raw: set[str] = set()
    for path in (REPO / "services").rglob("*.py"):
        code = path.read_text()
        for name in re.findall(r"\.subscribe\(\s*subjects\.([A-Za-z_]+)", code):
            raw.add(SUBJECT_FUNCTIONS.get(name) or getattr(subjects, name))
        for call in re.finditer(r"\.subscriber\(", code):  # FastStream subscribers besides command(...)
            assert "stream=" in code[call.end():call.end() + 300], \
                f"{path}: a core-NATS subscriber outside command(...): classify it in RAW_SUBSCRIPTIONS"
    assert raw | {"*.health"} == set(RAW_SUBSCRIPTIONS), "classify every raw subscription in RAW_SUBSCRIPTIONS"
    assert len(command_handlers) > 100 and subjects.AUTH_WORKSPACES_LIST in command_handlers


def test_the_probe_tells_internal_handlers_from_token_checked_ones(token_checked):
    # handlers known to trust the caller's bus identity instead of a token: the probe must see them as such
    for subject in (subjects.AUTH_KEYS_GET, subjects.AUTH_REVOCATIONS_LIST, subjects.AUTH_TOKEN_ISSUE,
                    subjects.AUTH_TOKEN_LOGOUT, subjects.AUTH_TOKEN_ISSUE_TASK, subjects.LOG_STORE_MAINTENANCE,
                    subjects.LINEAGE_EVENTS_COUNT,
                    subjects.MONITORING_REFERENCE_FEATURE):
        assert token_checked[subject] is False, subject
    for subject in (subjects.AUTH_WORKSPACES_LIST_USERS, subjects.DEPLOYER_DEPLOYMENTS_RESOLVE,
                    subjects.LINEAGE_WORKFLOW_LINKS[0], subjects.MONITORING_CT_SETUP, subjects.ASSAYS_CREATE):
        assert token_checked[subject] is True, subject


def test_the_client_reaches_token_checked_subjects_only(token_checked):
    """A subject the client may publish must verify the caller's token: a service-to-service subject reachable by
    an outside caller is a way around the token and the workspace checks."""
    open_internal = sorted(s for s, checked in token_checked.items()
                           if not checked and may(bus_identities.CLIENT, "publish", s))
    assert not open_internal, f"the client identity reaches subjects that verify no token: {open_internal}"
    # the gateway forwards outside callers' requests too: besides the same list, only what it does itself
    gateway_internal = {s for s, checked in token_checked.items() if not checked and may("gateway", "publish", s)}
    assert gateway_internal == {subjects.AUTH_TOKEN_ISSUE, subjects.AUTH_TOKEN_LOGOUT, subjects.AUTH_AUTHORIZE,
                                subjects.AUTH_KEYS_GET, subjects.AUTH_REVOCATIONS_LIST, "engine.*.infer", "*.health"
                                }, gateway_internal


def test_the_client_list_is_explicit_and_complete(token_checked):
    """No wildcards (a new subject is closed until listed), nothing stale, every token-checked command listed."""
    listed = bus_identities.permissions(bus_identities.CLIENT)["publish"]
    assert not listed["deny"]
    assert not [s for s in listed["allow"] if "*" in s or ">" in s], "the client's list names subjects one by one"
    assert len(listed["allow"]) == len(set(listed["allow"]))
    checked, allowed = {s for s, ok in token_checked.items() if ok}, set(listed["allow"])
    assert not allowed - checked, f"listed but not token-checked: {sorted(allowed - checked)}"
    assert not checked - allowed, f"token-checked commands missing from the client's list: {sorted(checked - allowed)}"
    # docs/security.md says how many (it said 140 while the list had grown to 142)
    assert f"Token-checked ({len(allowed)} subjects, all in the client's list)" in (
        REPO / "docs" / "security.md").read_text(), len(allowed)


# --- JetStream: each service its own consumers, not `$JS.API.>` -------------------------------------------------


def test_each_service_is_given_exactly_its_durable_consumers(routers):
    """The durables a service's code creates (FastStream JetStream subscribers, and the log store's raw pull
    consumer) are the ones deploy/nats-permissions.json gives it: a missing one could not be created or pulled."""
    pulls = [path for path in (REPO / "services").rglob("*.py")
             if re.search(r"pull_subscribe(_bind)?\(|add_consumer\(", path.read_text())]
    assert sorted(p.relative_to(REPO).as_posix() for p in pulls) == [
        "services/log_store/deployments.py", "services/log_store/handlers.py"], \
        "a raw JetStream consumer besides the log store's two: add its durable here and in the permissions file"
    for service in subjects.SERVICES:
        found: dict[str, set[str]] = {}
        for subscriber in routers["routers"][service].subscribers:
            stream = getattr(subscriber, "stream", None)
            if stream is not None:
                assert subscriber.config.durable_name, f"{service}: an ephemeral consumer on {stream.name}"
                found.setdefault(stream.name, set()).add(subscriber.config.durable_name)
        if service == "log_store":  # its raw pull consumers: the batches, and the deployer's announcements
            found[subjects.INFERENCE_LOGS_STREAM] = {subjects.INFERENCE_LOGS_DURABLE}
            found.setdefault(subjects.EVENTS_STREAM, set()).add(log_store_deployments.DURABLE)
        given = {stream: set(names) for stream, names in bus_identities.durables(service).items()}
        assert found == given, (service, found, given)


def test_no_service_may_delete_read_or_capture_streams_or_use_another_services_consumer():
    for service in subjects.SERVICES:
        rules = bus_identities.permissions(service)["publish"]["allow"]
        assert "$JS.API.>" not in rules and "$JS.ACK.>" not in rules, service
        for subject in ("$JS.API.STREAM.DELETE.EVENTS", "$JS.API.STREAM.PURGE.INFERENCE_LOGS",
                        "$JS.API.STREAM.MSG.GET.EVENTS", "$JS.API.STREAM.MSG.DELETE.EVENTS",
                        "$JS.API.DIRECT.GET.EVENTS", "$JS.API.STREAM.CREATE.CAPTURE", "$JS.API.STREAM.NAMES",
                        "$JS.API.STREAM.LIST", "$JS.API.CONSUMER.CREATE.EVENTS", "$JS.API.CONSUMER.LIST.EVENTS",
                        "$JS.API.CONSUMER.DELETE.EVENTS.workflow-lineage-events",
                        "$JS.API.CONSUMER.DELETE.INFERENCE_LOGS.log-store"):
            assert not may(service, "publish", subject), (service, subject)
        # every service may look for the platform's streams (it waits for them at start), nothing more
        for stream in subjects.STREAMS:
            assert may(service, "publish", f"$JS.API.STREAM.INFO.{stream}"), (service, stream)
    for service in subjects.SERVICES:
        for stream, names in bus_identities.durables(service).items():
            for name in names:
                for subject in (f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}", f"$JS.ACK.{stream}.{name}.1.2.3.4.5",
                                f"$JS.API.CONSUMER.INFO.{stream}.{name}", f"$JS.API.CONSUMER.CREATE.{stream}.{name}",
                                f"$JS.API.CONSUMER.CREATE.{stream}.{name}.x",
                                f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{name}"):
                    bootstrap = {bus_identities.BOOTSTRAP} if (stream, name) == (
                        subjects.INFERENCE_LOGS_STREAM, subjects.INFERENCE_LOGS_DURABLE) and (
                        ".INFO." in subject or ".DURABLE.CREATE." in subject) else set()  # creates it if missing
                    watchers = {other for other in subjects.SERVICES
                                if name in bus_identities.watches(other).get(stream, [])} if ".INFO." in subject \
                        else set()
                    assert who_may("publish", subject) == {service} | bootstrap | watchers, (
                        subject, who_may("publish", subject))


def test_the_assay_runner_may_only_look_at_how_far_the_log_store_has_got():
    """The assay scheduler reads the log store consumer's info (its ack floor: how far INFERENCE_LOGS is stored)
    before it scores a window; nothing that pulls, acknowledges, re-points, pauses or deletes that consumer."""
    consumer = f"{subjects.INFERENCE_LOGS_STREAM}.{subjects.INFERENCE_LOGS_DURABLE}"
    assert may("assay_runner", "publish", f"$JS.API.CONSUMER.INFO.{consumer}")
    assert may("assay_runner", "publish", f"$JS.API.STREAM.INFO.{subjects.INFERENCE_LOGS_STREAM}")
    for subject in (f"$JS.API.CONSUMER.MSG.NEXT.{consumer}", f"$JS.ACK.{consumer}.1.2.3.4.5",
                    f"$JS.API.CONSUMER.CREATE.{consumer}", f"$JS.API.CONSUMER.DURABLE.CREATE.{consumer}",
                    f"$JS.API.CONSUMER.DELETE.{consumer}", f"$JS.API.CONSUMER.PAUSE.{consumer}",
                    f"$JS.API.CONSUMER.UNPIN.{consumer}", "$JS.API.CONSUMER.INFO.EVENTS.workflow-lineage-events",
                    f"$JS.API.CONSUMER.LIST.{subjects.INFERENCE_LOGS_STREAM}"):
        assert not may("assay_runner", "publish", subject), subject
    # a watched consumer is some service's own durable; the code asks for exactly that one's info
    for service in subjects.SERVICES:
        for stream, names in bus_identities.watches(service).items():
            owners = {o for o in subjects.SERVICES for n in bus_identities.durables(o).get(stream, []) if n in names}
            assert owners, (service, stream, names)
    code = (REPO / "services" / "assay_runner" / "app.py").read_text()
    assert "js.consumer_info(subjects.INFERENCE_LOGS_STREAM, subjects.INFERENCE_LOGS_DURABLE)" in code


def test_streams_are_created_and_updated_by_the_bootstrap_identity_only():
    """No service creates or updates a stream: at the first start it could create one with subjects of its
    choosing, later change them. The log store's consumer is created (and, since a create also updates, re-pointed)
    by the log store alone. `bootstrap` (the stack's bootstrap step) may look at, create and update the platform's
    streams and nothing else."""
    for stream in (*subjects.STREAMS, "CAPTURE"):
        for verb in ("CREATE", "UPDATE"):
            assert who_may("publish", f"$JS.API.STREAM.{verb}.{stream}") == (
                {bus_identities.BOOTSTRAP} if stream in subjects.STREAMS else set()), (verb, stream)
    log_store = f"{subjects.INFERENCE_LOGS_STREAM}.{subjects.INFERENCE_LOGS_DURABLE}"
    for subject in (f"$JS.API.CONSUMER.CREATE.{log_store}", f"$JS.API.CONSUMER.CREATE.{log_store}.logs.inference.>"):
        assert who_may("publish", subject) == {"log_store"}, (subject, who_may("publish", subject))
    # the bootstrap step also creates the log store's consumer when it is missing (the legacy create subject,
    # which nats-py uses for a durable), so records published before the log store first ran are kept
    assert who_may("publish", f"$JS.API.CONSUMER.DURABLE.CREATE.{log_store}") == {"log_store", bus_identities.BOOTSTRAP}
    boot = bus_identities.permissions(bus_identities.BOOTSTRAP)
    assert set(boot["publish"]["allow"]) == {f"$JS.API.STREAM.{verb}.{stream}" for stream in subjects.STREAMS
                                             for verb in ("INFO", "CREATE", "UPDATE")} | {
        f"$JS.API.CONSUMER.INFO.{log_store}", f"$JS.API.CONSUMER.DURABLE.CREATE.{log_store}"}
    assert boot["subscribe"]["allow"] == [f"{bus_identities.inbox_prefix(bus_identities.BOOTSTRAP)}.>"]
    assert not boot["allow_responses"]
    # the code agrees: services only wait for the streams; ensure_streams (create/update) is the bootstrap's
    service_code = (REPO / "shared" / "service.py").read_text()
    assert "await wait_for_streams(broker)" in service_code
    assert "add_stream" not in service_code and "update_stream" not in service_code
    bus_code = (REPO / "shared" / "bus.py").read_text()
    assert bus_code.count("add_consumer") == 1 and "js.add_consumer(subjects.INFERENCE_LOGS_STREAM" in bus_code


def test_compose_runs_the_stream_bootstrap_first_and_gives_its_identity_to_it_only():
    """docker-compose: NATS knows every identity's password; the one-shot `bus-streams` container connects as
    `bootstrap` and every service starts after it completed; no service holds the bootstrap password."""
    import yaml

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    assert {bus_identities.password_variable(i) for i in bus_identities.identities()} <= set(
        compose["nats"]["environment"])
    boot = compose["bus-streams"]
    assert boot["command"][-1] == "shared.bus_streams"
    assert boot["environment"]["RAILYARD_NATS__USER"] == bus_identities.BOOTSTRAP
    assert bus_identities.password_variable(bus_identities.BOOTSTRAP) in boot["environment"]["RAILYARD_NATS__PASSWORD"]
    for name in subjects.SERVICES:
        service = compose[name.replace("_", "-")]
        assert service["depends_on"]["bus-streams"] == {"condition": "service_completed_successfully"}, name
        assert bus_identities.password_variable(bus_identities.BOOTSTRAP) not in str(service["environment"]), name


def test_the_matcher():
    assert covers("auth.>", "auth.keys.get") and not covers("auth.>", "auth")
    assert covers("engine.*.infer", "engine.d-1.infer") and not covers("engine.*.infer", "engine.d.x.infer")
    assert not covers("_INBOX.client.>", ">") and covers(">", ">") and not covers("auth.*", "auth.>")
