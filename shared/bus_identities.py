"""Bus identities: who may connect to NATS and which subjects each may publish and subscribe to.

`deploy/nats-permissions.json` is the one source. Every service connects as itself (user = its name, password
generated into the secrets file on first start, or from the environment in containers) with exactly its
subjects: it answers `<name>.>`, receives replies on its own inbox `_INBOX.<name>.>` (so nobody else's replies
reach it), publishes its own events and the commands it calls, and calls the JetStream API for the info of the
platform's streams, its own consumers and the consumers it `watches` only (`jetstream_api`). Engine replicas
connect as `engine` (the deployer hands them that credential). The platform's streams are created and updated by
`bootstrap` only, the identity of the stack's bootstrap step (shared/bus_streams.py), which runs before any service
starts. Outside callers get
`client`: the token-checked command subjects, listed one by one (a new subject is closed to them until listed),
and their replies, nothing else; the gateway (`front_door`) may publish the same list. `ops` is the operator's.

`python -m shared.bus_identities` renders `deploy/nats-auth.conf` (passwords as `$RAILYARD_NATS_PASSWORD_<NAME>`
environment references) for docker-compose, and its copy `deploy/kubernetes/nats/nats-auth.conf` for Kubernetes;
the embedded stack renders the same permissions with its generated passwords into `<data>/nats.conf`.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path
from typing import Any

from shared import subjects

PERMISSIONS_FILE = Path(__file__).resolve().parent.parent / "deploy" / "nats-permissions.json"
AUTH_CONF = PERMISSIONS_FILE.parent / "nats-auth.conf"
# the same file where kustomize may read it (a kustomization reads files below its own folder only)
KUBERNETES_AUTH_CONF = PERMISSIONS_FILE.parent / "kubernetes" / "nats" / "nats-auth.conf"
ENGINE = "engine"
CLIENT = "client"
BOOTSTRAP = "bootstrap"
OPS = "ops"
REPLY_INBOXES = "_INBOX.>"  # where services answer: the callers' inboxes (inbox_prefix), never another subject
# Services only other services send requests to keep `allow_responses` instead: they answer the requests they
# received and publish into no inbox. Engine replicas: the gateway, monitoring, the lineage service and the
# deployer's probes ask them, and no `client` subject reaches `engine.`; with `_INBOX.>` every replica (one tenant's,
# compromised: docs/security.md's threat table) could publish into every identity's inbox, the gateway's inference
# inboxes included, which count up under one prefix each replica sees (services/gateway/bus_request.py): it could
# answer other tenants' inferences before their own replicas did.
ANSWER_RECEIVED_ONLY = (ENGINE,)


@cache
def _document() -> dict[str, Any]:
    return json.loads(PERMISSIONS_FILE.read_text())


def identities() -> tuple[str, ...]:
    """Every bus identity: the services (engine replicas share `engine`), then the client and operator ones."""
    return (*subjects.SERVICES, *_document()["clients"])


def inbox_prefix(identity: str) -> str:
    """The reply-inbox prefix of an identity: its replies arrive under it and nobody else may subscribe there."""
    return f"_INBOX.{identity}"


def permissions(identity: str) -> dict[str, Any]:
    """NATS permissions of an identity: {publish: {allow, deny}, subscribe: {allow}, allow_responses}."""
    document = _document()
    if identity in document["clients"]:
        spec = document["clients"][identity]
        return {"publish": {"allow": list(spec["publish"]), "deny": list(spec.get("publish_deny", []))},
                "subscribe": {"allow": list(spec["subscribe"])},
                "allow_responses": bool(spec.get("allow_responses", False))}
    if identity not in document["services"]:
        raise KeyError(f"no bus identity {identity!r} in {PERMISSIONS_FILE.name}")
    spec, common = document["services"][identity], document["every_service"]
    # the gateway forwards outside callers' requests: it gets the same token-checked commands as `client`
    front_door = document["clients"][CLIENT]["publish"] if spec.get("front_door") else []
    received_only = identity in ANSWER_RECEIVED_ONLY
    if received_only and any(s.split(".")[0] in (identity, "*", ">") for s in document["clients"][CLIENT]["publish"]):
        raise ValueError(f"`client` may send {identity} requests: its answers must go to inboxes only, not to any "
                         "reply subject (`allow_responses`)")
    # it answers the requests it receives on their callers' inboxes (every identity's is `_INBOX.<identity>`), and
    # nowhere else: NATS's `allow_responses` lets a responder publish to whatever reply subject a request names, so
    # with it anyone who may send one command (the `client` identity) had every service publish its answer on any
    # subject of their choosing, the JetStream API, `events.>` and `logs.inference.>` (captured by the streams) and
    # other services' commands included (tests/integration/test_bus_reply_subjects.py)
    return {
        "publish": {"allow": [*common["publish"], *jetstream_api(identity), *spec.get("publish", []), *front_door,
                              *([] if received_only else [REPLY_INBOXES])],
                    "deny": list(spec.get("publish_deny", []))},
        "subscribe": {"allow": [f"{identity}.>", f"{inbox_prefix(identity)}.>", *common["subscribe"],
                                *spec.get("subscribe", [])]},
        "allow_responses": received_only,
    }


def durables(identity: str) -> dict[str, list[str]]:
    """The durable JetStream consumers a service reads, by stream."""
    return {stream: list(names) for stream, names in
            _document()["services"].get(identity, {}).get("durables", {}).items()}


def watches(identity: str) -> dict[str, list[str]]:
    """Other services' durable consumers whose info a service may read (how far they have got), by stream."""
    return {stream: list(names) for stream, names in
            _document()["services"].get(identity, {}).get("watches", {}).items()}


def jetstream_api(identity: str) -> list[str]:
    """The JetStream API subjects a service may publish, instead of `$JS.API.>` (which lets any service delete,
    purge, read or re-point any stream, create streams that capture command subjects, and pull, delete or
    re-point other services' consumers). Every service: info of the platform's streams (it waits for them at
    start), never their create or update (`bootstrap`'s: a service could otherwise create a stream with extra
    subjects at the first start, or change its subjects later). Its own durable consumers: info, create (which
    also updates), pull, ack; nobody else's. The consumers it `watches`: info only."""
    api = [f"$JS.API.STREAM.INFO.{stream}" for stream in subjects.STREAMS]
    for stream, names in watches(identity).items():
        api += [f"$JS.API.CONSUMER.INFO.{stream}.{name}" for name in names]
    for stream, names in durables(identity).items():
        for name in names:
            api += [f"$JS.API.CONSUMER.INFO.{stream}.{name}", f"$JS.API.CONSUMER.CREATE.{stream}.{name}",
                    f"$JS.API.CONSUMER.CREATE.{stream}.{name}.>", f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{name}",
                    f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}", f"$JS.ACK.{stream}.{name}.>"]
    return list(dict.fromkeys(api))


def consumes(identity: str) -> list[str]:
    """Subjects a service reads through JetStream consumers (delivered to its own inbox)."""
    return list(_document()["services"].get(identity, {}).get("consumes", []))


def password_variable(identity: str) -> str:
    return f"RAILYARD_NATS_PASSWORD_{identity.upper()}"


def render_authorization(passwords: dict[str, str] | None = None) -> str:
    """A nats-server `authorization` block for every identity. With `passwords`, they are written in (the
    embedded stack's file is mode 0600); without, each is an environment reference `$RAILYARD_NATS_PASSWORD_X`."""
    users = []
    for identity in identities():
        if passwords is None:
            password = f"${password_variable(identity)}"
        else:
            password = json.dumps(passwords[identity])
        rules = permissions(identity)
        rendered = {"publish": rules["publish"], "subscribe": rules["subscribe"]}
        if not rules["publish"]["deny"]:
            del rendered["publish"]["deny"]
        if rules["allow_responses"]:
            rendered["allow_responses"] = True
        users.append(f"    {{user: {json.dumps(identity)}, password: {password},\n"
                     f"     permissions: {json.dumps(rendered)}}}")
    return ("# Rendered from deploy/nats-permissions.json by shared/bus_identities.py; do not edit.\n"
            "# No anonymous connections: every client names one of these identities.\n"
            "authorization {\n  users = [\n" + ",\n".join(users) + "\n  ]\n}\n")


def main() -> int:
    for path in (AUTH_CONF, KUBERNETES_AUTH_CONF):
        path.write_text(render_authorization())
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
