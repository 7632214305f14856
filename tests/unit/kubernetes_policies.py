"""Which pod may open a connection to which, under a set of NetworkPolicies (matchLabels selectors, pods of one
namespace): the evaluator tests/unit/test_kubernetes_manifests.py checks the trust boundary with. A connection is
allowed when the source's egress and the target's ingress both allow it; a pod no policy of a direction selects is
open in that direction (the manifests' default-deny selects every pod)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Pod:
    """A pod of the namespace, by its template's labels."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def _applies(policy: dict[str, Any], pod: Pod, direction: str) -> bool:
    spec = policy["spec"]
    return direction in spec.get("policyTypes", ["Ingress"]) and _selects(spec["podSelector"], pod.labels)


def _peer_is(peer: dict[str, Any], pod: Pod) -> bool:
    """A peer of a rule names `pod` (of this namespace): a podSelector alone. An ipBlock or a namespaceSelector
    (DNS in kube-system) names no pod here."""
    return set(peer) == {"podSelector"} and _selects(peer["podSelector"], pod.labels)


def _port_in(rule: dict[str, Any], port: int) -> bool:
    return "ports" not in rule or any(p.get("port") == port and p.get("protocol", "TCP") == "TCP"
                                      for p in rule["ports"])


def allows(policies: list[dict[str, Any]], pod: Pod, peer: Pod, port: int, direction: str) -> bool:
    """Whether `pod`'s policies of `direction` ("Ingress" or "Egress") let it talk with `peer` on `port`."""
    applying = [p for p in policies if _applies(p, pod, direction)]
    if not applying:
        return True
    key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    for policy in applying:
        for rule in policy["spec"].get(key, []):
            peers = rule.get(peers_key)
            if (not peers or any(_peer_is(p, peer) for p in peers)) and _port_in(rule, port):
                return True
    return False


def reachable(policies: list[dict[str, Any]], source: Pod, target: Pod, port: int) -> bool:
    """Whether `source` may open a TCP connection to `target`'s `port`."""
    return allows(policies, source, target, port, "Egress") and allows(policies, target, source, port, "Ingress")


def egress_ip_blocks(policies: list[dict[str, Any]], pod: Pod) -> list[dict[str, Any]]:
    """The address ranges `pod` may reach outside the cluster's pods."""
    return [peer["ipBlock"] for p in policies if _applies(p, pod, "Egress") for rule in p["spec"].get("egress", [])
            for peer in rule.get("to", []) if "ipBlock" in peer]
