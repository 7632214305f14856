"""A small client for an MLflow tracking server's REST API: registered models, model-version download URIs
and the artifact proxy (`mlflow-artifacts`). Every request's URL is checked first (shared.urlcheck), the request
goes to the very address that was checked (a name re-resolved to an internal address meanwhile gains nothing) and
redirects are not followed, so a registry cannot steer the platform to its own servers or internal addresses.

MLflow 3 stores a version's `source` as `models:/m-<id>` (a logged model) and answers get-download-uri with
an `mlflow-artifacts:/<path>` URI; both are resolved to artifact-proxy paths here.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, unquote, urlparse

from shared.errors import InvalidRequest, NotFound, Unavailable
from shared.urlcheck import OutboundRules

ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"
MAX_LISTED = 1000
_ssl_context: Any = None


def _verify(httpx: Any) -> Any:
    """httpx's default TLS verification, built once per process: httpx builds a context (certifi's CA bundle) for
    every client, and a client per request cost 36-47 ms of CPU on the registry's event loop (2026-12-02) against
    0.3 ms with the context shared. The same settings as httpx's default (SSL_CERT_FILE/SSL_CERT_DIR honoured)."""
    global _ssl_context
    if _ssl_context is None:
        make = getattr(httpx, "create_ssl_context", None)  # public since httpx 0.28
        _ssl_context = make() if make is not None else True
    return _ssl_context


class MlflowRegistry:
    """One MLflow server, reached with an optional bearer token."""

    def __init__(self, url: str, token: str | None, *, rules: OutboundRules, timeout: float = 30.0,
                 caller: str | None = None) -> None:
        """`caller`: the user on whose behalf it is asked (one name lookup at a time each: `OutboundRules.check`)."""
        self.base = url.rstrip("/")
        self.caller = caller
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.rules = rules
        self.timeout = timeout

    @asynccontextmanager
    async def _response(self, url: str, what: str, params: dict[str, Any] | None = None) -> AsyncIterator[Any]:
        """A streamed GET of `url`, checked now and sent to an address that was checked: the preferred one, the
        next on a connection failure (a name with an unreachable IPv6 address still works, as it did when httpx
        resolved the name itself)."""
        checked = await self.rules.check(url, what=what, caller=self.caller)
        import httpx  # here, not at import: a registry service no one asks about MLflow does without it

        async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False, verify=_verify(httpx)) as client:
            for address in checked.addresses:
                target, host, extensions = checked.pinned(address)
                request = client.build_request("GET", target, params=params, headers={**self.headers, **host},
                                               extensions=extensions)
                try:
                    response = await client.send(request, stream=True)
                except httpx.ConnectError:
                    if address == checked.addresses[-1]:
                        raise
                    continue
                try:
                    yield response
                finally:
                    await response.aclose()
                return

    async def _get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        import httpx

        try:
            async with self._response(f"{self.base}{path}", "registry url", params) as response:
                await response.aread()
        except httpx.HTTPError as exc:
            raise Unavailable(f"the registry did not answer: {type(exc).__name__}") from None
        if response.status_code == 404:
            raise NotFound("not found in the registry")
        if response.status_code in (401, 403):
            raise InvalidRequest("the registry refused the token")
        if response.status_code >= 400:
            raise Unavailable(f"the registry answered {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise Unavailable("the registry's answer is not JSON") from None

    async def search_models(self, page_token: str | None, max_results: int) -> dict[str, Any]:
        params: dict[str, Any] = {"max_results": max_results}
        if page_token:
            params["page_token"] = page_token
        body = await self._get("/api/2.0/mlflow/registered-models/search", params)
        models = []
        for model in body.get("registered_models", []):
            models.append({
                "name": model.get("name"),
                "user_id": model.get("user_id"),
                "latest_versions": [_version(v) for v in model["latest_versions"]] if model.get("latest_versions")
                else None,
                "creation_timestamp": model.get("creation_timestamp"),
                "last_updated_timestamp": model.get("last_updated_timestamp"),
            })
        return {"next_page_token": body.get("next_page_token") or None, "registered_models": models}

    async def _artifact_root(self, name: str, version: str) -> str:
        """The artifact-proxy path of a model version's files."""
        uri = (await self._get("/api/2.0/mlflow/model-versions/get-download-uri",
                               {"name": name, "version": version})).get("artifact_uri", "")
        if uri.startswith("models:/"):
            model_id = uri.removeprefix("models:/").split("/")[0]
            logged = await self._get(f"/api/2.0/mlflow/logged-models/{quote(model_id)}")
            uri = logged.get("model", {}).get("info", {}).get("artifact_uri", "")
        if uri.startswith("mlflow-artifacts:"):
            try:
                parsed = urlparse(uri)
            except ValueError:  # `mlflow-artifacts://[x/` from the registry
                raise Unavailable("the registry's artifact_uri is not a valid URI") from None
            return parsed.path.lstrip("/")
        raise InvalidRequest(f"artifacts stored at {uri.split(':')[0] or 'an unknown place'}: are not reachable"
                             " through the registry's artifact proxy (run `mlflow server` with artifact serving)")

    async def list_artifacts(self, name: str, version: str) -> list[dict[str, Any]]:
        root = await self._artifact_root(name, version)
        found: list[dict[str, Any]] = []
        folders = [root]
        while folders and len(found) < MAX_LISTED:
            folder = folders.pop(0)
            listing = await self._get(ARTIFACTS_API, {"path": folder})
            for entry in listing.get("files", []):
                relative = f"{folder}/{entry['path'].split('/')[-1]}"
                found.append({
                    "file_size": entry.get("file_size"),
                    "full_path": f"{self.base}{ARTIFACTS_API}/{quote(relative)}",
                    "is_dir": bool(entry.get("is_dir")),
                    "modification_time": None,
                    "path": f"/{relative}",
                })
                if entry.get("is_dir"):
                    folders.append(relative)
        return found

    def _under_artifacts(self, full_path: str) -> bool:
        """Is `full_path` under the artifact proxy as it is SENT? httpx removes dot segments
        (`.../artifacts/../../../../varz` goes out as `/varz`, the NATS monitor's path on a shared host), so a `.` or
        `..` segment, percent-encoded (`%2e%2e`, `..%2f`) too, is refused, and the path httpx sends must still start
        with the proxy's."""
        import httpx

        try:
            path = urlparse(full_path).path
        except ValueError:
            return False
        for _ in range(3):  # `%252e%252e` is `..` to a server that decodes twice
            path = unquote(path)
        if any(segment in (".", "..") for segment in re.split(r"[/\\]", path)):
            return False
        try:
            sent, base = httpx.URL(full_path), httpx.URL(self.base)
        except (httpx.InvalidURL, ValueError):
            return False
        prefix = f"{base.path.rstrip('/')}{ARTIFACTS_API}/"
        return (sent.scheme, sent.host, sent.port) == (base.scheme, base.host, base.port) and \
            sent.path.startswith(prefix)

    async def download(self, full_path: str) -> AsyncIterator[bytes]:
        """Stream one artifact; only paths under this registry's artifact proxy are fetched."""
        if not full_path.startswith(f"{self.base}{ARTIFACTS_API}/") or not self._under_artifacts(full_path):
            raise InvalidRequest("path must be a full_path from list_registry_model_version_artifacts of this"
                                 " registry")
        async with self._response(full_path, "path") as response:
            if response.status_code == 404:
                raise NotFound("artifact not found in the registry")
            if response.status_code >= 400:
                raise Unavailable(f"the registry answered {response.status_code}")
            async for chunk in response.aiter_bytes(1024 * 1024):
                yield chunk


def _version(version: dict[str, Any]) -> dict[str, Any]:
    keys = ("name", "description", "version", "status", "run_id", "run_link", "source", "current_stage",
            "creation_timestamp", "last_updated_timestamp")
    record = {key: version.get(key) for key in keys}
    record["description"] = record["description"] or None
    record["run_link"] = record["run_link"] or None
    return record
