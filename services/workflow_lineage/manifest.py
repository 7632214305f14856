"""A project's manifest: what its datasets hold, by content hash, in one canonical JSON document.

The manifest names objects by sha256 only, so a version costs a row (never a byte copy) and a restore
rebuilds a project from it. Project name, ids and times are left out: two projects with the same datasets
have the same content hash, which is how a restore proves it brought back exactly what was saved.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

MANIFEST_FORMAT = 1


def build(datasets: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest of datasets given as {name, kind, rows_sha256, row_count, files: [{name, sha256, size,
    content_type, labels}]}; order-independent (sorted by name)."""
    entries = []
    for dataset in sorted(datasets, key=lambda d: d["name"]):
        files = [{"name": f["name"], "sha256": f["sha256"], "size": int(f["size"]),
                  "content_type": f["content_type"], "labels": f.get("labels")}
                 for f in sorted(dataset.get("files", []), key=lambda f: f["name"])]
        rows = ({"sha256": dataset["rows_sha256"], "count": int(dataset["row_count"])}
                if dataset.get("rows_sha256") else None)
        entries.append({"name": dataset["name"], "kind": dataset["kind"], "rows": rows, "files": files})
    return {"format": MANIFEST_FORMAT, "datasets": entries}


def canonical(manifest: dict[str, Any]) -> str:
    """The one serialization that is hashed (sorted keys, no whitespace, UTF-8)."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(manifest).encode()).hexdigest()


def objects(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """(entity, sha256) of every object the manifest refers to; entity is `dataset` or `dataset/file`."""
    found = []
    for dataset in manifest["datasets"]:
        if dataset["rows"]:
            found.append((f"{dataset['name']}#rows", dataset["rows"]["sha256"]))
        found.extend((f"{dataset['name']}/{f['name']}", f["sha256"]) for f in dataset["files"])
    return found


def without(manifest: dict[str, Any], missing: set[str]) -> dict[str, Any]:
    """The manifest minus the entities named in `missing` (skip_missed_entities)."""
    datasets = []
    for dataset in manifest["datasets"]:
        rows = None if f"{dataset['name']}#rows" in missing else dataset["rows"]
        files = [f for f in dataset["files"] if f"{dataset['name']}/{f['name']}" not in missing]
        datasets.append({**dataset, "rows": rows, "files": files})
    return {**manifest, "datasets": datasets}
