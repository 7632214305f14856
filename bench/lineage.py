"""Project versions and restores are manifest copies: a version of a project holding FILES files (and a
ROWS-row table) is created and restored through the gateway, against the cheapest byte copy of the same objects
(S3 server-side copies, measured in the same run). Starts its own embedded stack."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid

import httpx
import numpy as np
import pyarrow as pa

from bench import stack_with_pipeline
from shared.arrow_codec import to_ipc_file
from shared.objectstore import BUCKET_DATASETS, MinioObjectStore, content_key

FILES = 300
FILE_BYTES = 64 * 1024
ROWS = 1_000_000
RUNS = 5


def _post(api: str, token: str, route: str, body: dict) -> dict:
    response = httpx.post(f"{api}/{route}", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=120)
    response.raise_for_status()
    return response.json()


def run() -> str:
    with stack_with_pipeline("lineage") as bench:
        api, token, workspace = bench.stack.api, bench.token, bench.workspace
        auth = {"Authorization": f"Bearer {token}"}
        project = _post(api, token, "projects/create", {"workspace_id": workspace, "name": "bench"})
        files = _post(api, token, "datasets/create", {"project_id": project["id"], "name": "blobs", "kind": "files"})
        table = _post(api, token, "datasets/create", {"project_id": project["id"], "name": "rows"})
        shas = []
        with httpx.Client(timeout=60, headers=auth) as client:
            started = time.perf_counter()
            for i in range(FILES):
                answer = client.post(f"{api}/datasets/upload_file", data={"dataset_id": str(files["id"]),
                                     "name": f"f{i}.bin"}, files={"file": (f"f{i}.bin", os.urandom(FILE_BYTES))})
                answer.raise_for_status()
                shas.append(answer.json()["sha256"])
            upload_s = time.perf_counter() - started
            rng = np.random.default_rng(0)
            body = to_ipc_file(pa.table({"x": rng.normal(size=ROWS), "y": rng.integers(0, 10, ROWS)}))
            started = time.perf_counter()
            client.post(f"{api}/datasets/upload_rows", params={"dataset_id": table["id"]}, content=body,
                        headers={"Content-Type": "application/vnd.apache.arrow.file"}).raise_for_status()
            rows_s = time.perf_counter() - started
        versions, restores = [], []
        for run_number in range(RUNS):
            # a change first, so each version is new (an unchanged project returns the last version at once)
            _post(api, token, "datasets/create", {"project_id": project["id"], "name": f"marker{run_number}"})
            started = time.perf_counter()
            version = _post(api, token, "projects/create_version", {"project_id": project["id"]})
            versions.append(time.perf_counter() - started)
            started = time.perf_counter()
            _post(api, token, "projects/restore_version", {"project_id": project["id"], "version_id": version["id"],
                                                           "name": f"restored{run_number}"})
            restores.append(time.perf_counter() - started)
        started = time.perf_counter()
        _post(api, token, "projects/create_version", {"project_id": project["id"]})
        dedupe_s = time.perf_counter() - started
        store = MinioObjectStore(bench.stack.settings().s3)

        async def byte_copy() -> float:
            begun = time.perf_counter()
            for sha in shas:
                await store.copy(BUCKET_DATASETS, content_key(sha), f"bench-copy/{uuid.uuid4()}")
            return time.perf_counter() - begun

        copies = [asyncio.run(byte_copy()) for _ in range(2)]
    version_s, restore_s, copy_s = statistics.median(versions), statistics.median(restores), min(copies)
    return (
        "## Lineage: project versions and restores\n\n"
        f"A project of {FILES} files of {FILE_BYTES // 1024} KiB and a {ROWS:,}-row table (median of {RUNS}):\n\n"
        "| operation | time | against a byte copy of the files (S3 server-side copies) |\n|---|---|---|\n"
        f"| create_version | {version_s * 1000:.0f} ms | {copy_s / version_s:.1f}x faster |\n"
        f"| restore_version (new project) | {restore_s * 1000:.0f} ms | {copy_s / restore_s:.1f}x faster |\n"
        f"| create_version, nothing changed (dedupe) | {dedupe_s * 1000:.0f} ms | |\n"
        f"| byte copy of the {FILES} objects | {copy_s * 1000:.0f} ms | 1x |\n\n"
        f"Uploads through the gateway: {FILES} files in {upload_s:.1f} s ({FILES / upload_s:.0f} files/s);"
        f" {ROWS:,} rows as Arrow in {rows_s:.2f} s.\n"
    )


if __name__ == "__main__":
    print(run())
