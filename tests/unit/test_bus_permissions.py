"""Each service's code against deploy/nats-permissions.json, and the rules of the bus: only auth answers `auth.>`
and announces keys and users, only engines answer inferences and publish inference logs, only the log store
answers `log_store.>`, each kind of event has one publisher, and the front-door client identity reaches nothing
it should not. The integration twin (tests/integration/test_bus_identities.py) tries the same on a real server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared import bus_identities, subjects

REPO = Path(__file__).resolve().parents[2]
SUBJECT_FUNCTIONS = {"engine_infer": "engine.*.infer", "engine_replica_status": "engine.*.replica.*.status",
                     "health": "*.health"}


def covers(pattern: str, subject: str) -> bool:
    """Does a NATS permission pattern cover a subject (itself maybe with wildcards, as a subscription may be)?"""
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


def test_the_matcher():
    assert covers("auth.>", "auth.keys.get") and not covers("auth.>", "auth")
    assert covers("engine.*.infer", "engine.d-1.infer") and not covers("engine.*.infer", "engine.d.x.infer")
    assert not covers("_INBOX.client.>", ">") and covers(">", ">") and not covers("auth.*", "auth.>")
