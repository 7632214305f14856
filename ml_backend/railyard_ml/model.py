"""`LabelStudioMLBase`: the class a backend's model inherits from, compatible with label_studio_ml's.

Both generations of Label Studio backends run unchanged apart from their import line:

- label-studio-ml 1.0.x style: `__init__(self, **kwargs)` reading `self.label_config`, `self.parsed_label_config`
  and `self.train_output`; `fit(self, annotations, workdir=None, **kwargs)` returning a dict that becomes the next
  instance's `train_output`;
- label-studio-ml 2.x style: `setup()`, `self.get/set` (a per-project key/value cache), `self.label_interface`,
  `predict(tasks, context=None, **kwargs)` returning a list or a `ModelResponse`, `fit(self, event, data, **kwargs)`.

The server decides which `fit` convention a class uses from the name of its first parameter (`event` → 2.x).
"""

from __future__ import annotations

import base64
import contextvars
import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from railyard_ml.label_config import LabelInterface
from railyard_ml.response import ModelResponse
from railyard_ml.store import ProjectCache, Store

logger = logging.getLogger(__name__)

TRAINED_KEY = "railyard_ml.trained"


@dataclass
class _Construction:
    """What the server hands an instance it builds (kept out of `__init__`'s signature, which users own)."""

    cache: ProjectCache
    hostname: str = ""
    access_token: str = ""
    model_dir: str = "."


_constructing: contextvars.ContextVar[_Construction | None] = contextvars.ContextVar("railyard_ml_construct",
                                                                                     default=None)
_default_stores: dict[str, Store] = {}
# set by the server around building a model and around its predict: a list that gets an entry when the model reads
# the labeling config of an instance that has none (_NoConfig), so a failure after such a read can be told the
# request lacked the config (backend._config_refusal); None outside the server
config_reads: contextvars.ContextVar[list | None] = contextvars.ContextVar("railyard_ml_config_reads", default=None)


class _NoConfig(dict):
    """`parsed_label_config` of an instance without a labeling config (none sent, none set up for the project): an
    empty dict, as before, that notes in `config_reads` each time the model reads it (`list(...items())[0]`, the
    1.x backends' first line, raised IndexError, and the server answered 500 model_error for a config the request
    could have carried)."""

    def _read(self) -> None:
        reads = config_reads.get()
        if reads is not None:
            reads.append(True)

    def __getitem__(self, key: Any) -> Any:
        self._read()
        return super().__getitem__(key)

    def __iter__(self):  # noqa: ANN204
        self._read()
        return super().__iter__()

    def __len__(self) -> int:
        self._read()
        return super().__len__()

    def __contains__(self, key: object) -> bool:
        self._read()
        return super().__contains__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        self._read()
        return super().get(key, default)

    def items(self):  # noqa: ANN201
        self._read()
        return super().items()

    def keys(self):  # noqa: ANN201
        self._read()
        return super().keys()

    def values(self):  # noqa: ANN201
        self._read()
        return super().values()


def _default_cache(project_id: str) -> ProjectCache:
    """An instance built outside the server keeps its cache in MODEL_DIR (default: the working directory)."""
    model_dir = os.getenv("MODEL_DIR", ".")
    if model_dir not in _default_stores:
        _default_stores[model_dir] = Store(model_dir)
    return ProjectCache(_default_stores[model_dir], project_id)


def next_version(version: str | None) -> str:
    """The version after `version`: semver-like endings move a minor step (0.0.1 -> 0.1.0), numbers count up."""
    if not version:
        return LabelStudioMLBase.INITIAL_MODEL_VERSION
    semver = re.fullmatch(r"(.*?)(\d+)\.(\d+)\.(\d+)", version)
    if semver:
        prefix, major, minor, _ = semver.groups()
        return f"{prefix}{major}.{int(minor) + 1}.0"
    number = re.fullmatch(r"(.*?)(\d+)", version)
    if number:
        return f"{number.group(1)}{int(number.group(2)) + 1}"
    return f"{version}-1"


def cached_download(url: str, folder: str | Path, host: str | None, token: str | None,
                    host_env: str = "LABEL_STUDIO_URL") -> str:
    """`url` (a data: URI, http(s), or a path on Label Studio's `host`) downloaded once into `folder`, named by
    its hash; the Label Studio `token` is only sent to `host`. `host_env`: the variable the caller reads `host` from,
    named when no host is known (a backend's LABEL_STUDIO_URL; railyard_ml.utils' LABEL_STUDIO_HOSTNAME)."""
    parsed = urlparse(url)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = Path(parsed.path).suffix if parsed.scheme != "data" else ""
    target = folder / (hashlib.sha256(url.encode()).hexdigest()[:32] + suffix)
    if target.exists():
        return str(target)
    if parsed.scheme == "data":
        header, _, payload = url.partition(",")
        content = base64.b64decode(payload) if header.endswith(";base64") else unquote(payload).encode()
    else:
        import httpx  # only backends that download pay for it

        host = (host or "").rstrip("/")
        if parsed.scheme not in ("http", "https") and urlparse(host).scheme not in ("http", "https"):
            # label_studio_ml's answer (httpx's was "missing an 'http://' or 'https://' protocol"); a host without
            # one is Docker's HOSTNAME, a container's id
            raise FileNotFoundError(f"can't resolve {url!r}: a path on Label Studio's host, whose URL is not known"
                                    f" ({host!r}): set {host_env}, or give hostname")
        full = url if parsed.scheme in ("http", "https") else f"{host}/{url.lstrip('/')}"
        headers = {}
        if token and host and full.startswith(host + "/"):
            headers["Authorization"] = f"Token {token}"
        answer = httpx.get(full, headers=headers, timeout=60, follow_redirects=True)
        answer.raise_for_status()
        content = answer.content
    with tempfile.NamedTemporaryFile(dir=folder, delete=False) as partial:
        partial.write(content)
    os.replace(partial.name, target)
    return str(target)


class LabelStudioMLBase:
    """Base class of a Label Studio ML backend model: override `predict` (and `fit` to train on annotations)."""

    INITIAL_MODEL_VERSION = "0.0.1"
    TRAIN_EVENTS = (
        "ANNOTATION_CREATED",
        "ANNOTATIONS_CREATED",
        "ANNOTATION_UPDATED",
        "ANNOTATION_DELETED",
        "ANNOTATIONS_DELETED",
        "START_TRAINING",
    )

    def __init__(self, project_id: str | None = None, label_config: str | None = None,
                 train_output: dict | None = None, **kwargs: Any) -> None:
        built = _constructing.get()
        self.project_id = str(project_id) if project_id is not None else ""
        self._cache = built.cache if built else _default_cache(self.project_id)
        self._in_setup = False
        self.hostname = (kwargs.get("hostname") or (built.hostname if built else "")
                         or os.getenv("LABEL_STUDIO_URL") or os.getenv("LABEL_STUDIO_HOST") or "")
        self.access_token = (kwargs.get("access_token") or (built.access_token if built else "")
                             or os.getenv("LABEL_STUDIO_API_KEY") or os.getenv("LABEL_STUDIO_ACCESS_TOKEN") or "")
        self.model_dir = built.model_dir if built else os.getenv("MODEL_DIR", ".")
        if label_config is not None:
            self.use_label_config(label_config)
        else:
            self._apply_label_config(self.get("label_config"))
        if train_output is None:
            stored = self.get("train_output")
            train_output = json.loads(stored) if stored else {}
        self.train_output = train_output
        if not self.get("model_version"):
            self.set("model_version", self.INITIAL_MODEL_VERSION)
        self._in_setup = True
        try:
            self.setup()
        finally:
            self._in_setup = False

    def setup(self) -> None:
        """Override to prepare the model (load weights, set the initial `model_version`)."""

    # --- the labeling config
    def use_label_config(self, label_config: str) -> None:
        """Apply a labeling config (parsed into `parsed_label_config`) and keep it for this project."""
        self._apply_label_config(label_config)
        if self.get("label_config") != label_config:
            self.set("label_config", label_config)
            self.set("parsed_label_config", json.dumps(self.parsed_label_config))

    def _apply_label_config(self, label_config: str | None) -> None:
        self.label_config = label_config
        self.label_interface = LabelInterface(label_config)
        self.parsed_label_config = self.label_interface.parsed if label_config else _NoConfig()

    # --- the per-project cache, as label_studio_ml's get/set
    def get(self, key: str) -> str | None:
        """A value this project stored with `set` (None if none)."""
        return self._cache.get(key)

    def set(self, key: str, value: str) -> None:
        """Store a string for this project; it survives restarts. During a `fit` it lands only if the fit succeeds."""
        if not isinstance(value, str):
            raise ValueError("Value must be a string")
        if key == "model_version" and self._in_setup and self._cache.get(TRAINED_KEY):
            # setup() names the initial version; once a fit has moved the version on, keep the trained one
            return
        self._cache.set(key, value)

    def has(self, key: str) -> bool:
        return self.get(key) is not None

    @property
    def model_version(self) -> str | None:
        """The version this project's model serves (moves on after every successful `fit`)."""
        return self.get("model_version")

    @model_version.setter
    def model_version(self, value: str) -> None:
        self.set("model_version", str(value))

    def bump_model_version(self) -> str:
        """Move the model version on (0.0.1 -> 0.1.0) and return it."""
        version = next_version(self.model_version)
        self.set("model_version", version)
        return version

    def set_extra_params(self, extra_params: Any) -> None:
        self.set("extra_params", json.dumps(extra_params))

    @property
    def extra_params(self) -> dict:
        """The `extra_params` Label Studio sent with `/setup` (the ML backend's settings in the project)."""
        stored = self.get("extra_params")
        return json.loads(stored) if stored else {}

    # --- what a model overrides
    def predict(self, tasks: list[dict], context: dict | None = None, **kwargs: Any) -> list[dict] | ModelResponse:
        """Return one prediction (`{"result": [...], "score": ...}`) per task, in order."""
        return []

    def fit(self, event, data=None, **kwargs: Any):  # noqa: ANN001 - both fit conventions share this default
        """Train on annotations; what it returns becomes `train_output`."""
        return {}

    def process_event(self, event: str, data: dict, job_id: str, additional_params: dict) -> Any:
        if event in self.TRAIN_EVENTS:
            return self.fit(event=event, data=data, job_id=job_id, **additional_params)
        return None

    # --- helpers backends use
    def get_first_tag_occurence(self, control_type, object_type, name_filter=None, to_name_filter=None):
        """(from_name, to_name, value) of the first `control_type` tag over an `object_type` tag."""
        return self.label_interface.get_first_tag_occurence(control_type, object_type, name_filter, to_name_filter)

    def build_label_map(self, tag_name: str, names: list[str]) -> dict[str, str]:
        """Map the model's label names to the config's (`predicted_values`, exact or case-insensitive names)."""
        label_map: dict[str, str] = {}
        lower = {name.lower() for name in names}
        for ls_label, attrs in self.label_interface.get_control(tag_name).labels_attrs.items():
            matched = False
            for value in (v.strip() for v in attrs.get("predicted_values", "").split(",")):
                if value and value in names:
                    label_map[value] = ls_label
                    matched = True
            if not matched:
                if ls_label in names:
                    label_map[ls_label] = ls_label
                elif ls_label.lower() in lower:
                    label_map[ls_label.lower()] = ls_label
        return label_map

    def get_local_path(self, url: str, project_dir: str | None = None, ls_host: str | None = None,
                       ls_access_token: str | None = None, task_id: int | None = None, **kwargs: Any) -> str:
        """A local file for a task's data URL: local paths as they are, data: URIs and http(s)/Label Studio
        upload URLs downloaded once into the model directory (the Label Studio token goes to Label Studio only)."""
        parsed = urlparse(url)
        if parsed.scheme == "file":
            return unquote(parsed.path)
        if parsed.scheme == "" and os.path.exists(url):
            return url
        if project_dir and parsed.scheme == "" and os.path.exists(os.path.join(project_dir, url)):
            return os.path.join(project_dir, url)
        return cached_download(url, Path(self.model_dir) / "downloads", ls_host or self.hostname,
                               ls_access_token or self.access_token)

    def preload_task_data(self, task: dict, value: Any = None, read_file: bool = True) -> Any:
        """Replace URLs in a task's data by their content (or local path when `read_file` is False)."""
        if isinstance(value, dict):
            return {key: self.preload_task_data(task, item, read_file) for key, item in value.items()}
        if isinstance(value, list):
            return [self.preload_task_data(task, item, read_file) for item in value]
        if isinstance(value, str) and re.match(r"^(https?://|s3://|gs://|azure-blob://|/data/|data:)", value):
            path = self.get_local_path(value, task_id=task.get("id"))
            if not read_file:
                return path
            with open(path) as file:
                return file.read()
        return value
