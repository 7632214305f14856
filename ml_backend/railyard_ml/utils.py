"""Helpers label_studio_ml.utils offered that backends import (same names): 1.0.x's (get_image_local_path,
get_local_path, get_image_size, ...) and 2.x's (match_labels, InMemoryLRUDictCache, ...)."""

from __future__ import annotations

import difflib
import os
import tempfile
from collections import OrderedDict
from typing import Any
from urllib.parse import unquote, urlparse

DATA_UNDEFINED_NAME = "$undefined$"


def get_env(name: str, default: str | None = None, is_bool: bool = False):  # noqa: ANN201
    """`name` from the environment, first with the LABEL_STUDIO_ (then HEARTEX_) prefix, as label_studio_ml looks:
    Docker sets HOSTNAME to the container's id, which was read before LABEL_STUDIO_HOSTNAME."""
    for key in (f"LABEL_STUDIO_{name}", f"HEARTEX_{name}", name):
        value = os.environ.get(key)
        if value is not None:
            return value.lower() in ("1", "true", "yes", "y", "on") if is_bool else value
    return default


def get_single_tag_keys(parsed_label_config: dict, control_type: str, object_type: str):  # noqa: ANN201
    """(from_name, to_name, value, labels) of a config with exactly one `control_type` over one `object_type`."""
    assert len(parsed_label_config) == 1, "the labeling config must have exactly one control tag"
    from_name, info = next(iter(parsed_label_config.items()))
    assert info["type"] == control_type, f'the config has <{info["type"]}> but <{control_type}> is expected'
    assert len(info["to_name"]) == 1 and len(info["inputs"]) == 1
    assert info["inputs"][0]["type"] == object_type
    return from_name, info["to_name"][0], info["inputs"][0]["value"], info["labels"]


def get_first_tag_keys(parsed_label_config: dict, control_type: str, object_type: str):  # noqa: ANN201
    for from_name, info in parsed_label_config.items():
        if info["type"] == control_type:
            for entry in info["inputs"]:
                if entry["type"] == object_type:
                    return from_name, info
    return None, None


def is_skipped(completion: dict) -> bool:
    if len(completion["annotations"]) != 1:
        return False
    annotation = completion["annotations"][0]
    return bool(annotation.get("skipped", False) or annotation.get("was_cancelled", False))


def get_choice(completion: dict) -> str:
    return completion["annotations"][0]["result"][0]["value"]["choices"][0]


def get_image_size(filepath: str) -> tuple[int, int]:
    """(width, height) of an image as it is shown (EXIF orientation applied); needs Pillow."""
    from PIL import Image, ImageOps

    with Image.open(filepath) as image:
        return ImageOps.exif_transpose(image).size


def get_local_path(url: str, cache_dir: str | None = None, project_dir: str | None = None,
                   hostname: str | None = None, image_dir: str | None = None, access_token: str | None = None,
                   **kwargs: Any) -> str:
    """label_studio_ml 1.0.x's module-level get_local_path (backends' `self.get_local_path` does the same with the
    host and token of `/setup`): a local file for a task's data URL. Label Studio's local-files URLs
    (`/data/local-files/?d=dir/name`) and uploads found under `image_dir` or `project_dir/upload` are read in place;
    anything else is downloaded once into `cache_dir` (default `$MODEL_DIR/downloads`), the token sent to
    `hostname` (default `LABEL_STUDIO_HOSTNAME` / `HOSTNAME`) only."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    if parsed.scheme == "" and os.path.exists(url):
        return url
    if url.startswith("/data/") and "?d=" in url:  # Label Studio's local files storage
        head, _, rest = url.partition("?d=")
        path, name = unquote(rest), head[len("/data/"):]
        if name.strip("/") != "local-files":  # 1.0.x's /data/<file name>?d=<folder>
            path = os.path.join(path, name)
        for candidate in (path, os.path.join(get_env("LOCAL_FILES_DOCUMENT_ROOT", "/") or "/", path)):
            if os.path.exists(candidate):
                return candidate
        raise FileNotFoundError(path)
    upload_dir = image_dir or (project_dir and os.path.join(project_dir, "upload"))
    if url.startswith("/data/upload") and upload_dir and os.path.exists(upload_dir):
        return url.replace("/data/upload", upload_dir, 1)
    from railyard_ml.model import cached_download

    folder = cache_dir or os.path.join(os.environ.get("MODEL_DIR") or tempfile.gettempdir(), "downloads")
    return cached_download(url, folder, hostname or get_env("HOSTNAME"),
                           access_token or get_env("ACCESS_TOKEN") or get_env("API_KEY"),
                           host_env="LABEL_STUDIO_HOSTNAME")


def get_image_local_path(url: str, image_cache_dir: str | None = None, project_dir: str | None = None,
                         image_dir: str | None = None) -> str:
    """label_studio_ml 1.0.x's: get_local_path for an image URL."""
    return get_local_path(url, image_cache_dir, project_dir, None, image_dir)


def match_labels(input: str, labels: list[str]) -> list[str]:  # noqa: A002 - label_studio_ml's name
    """The closest of `labels` (difflib's ratio) for each line of a model's text answer."""
    matched = []
    for predicted in input.splitlines():
        scores = [difflib.SequenceMatcher(None, predicted, label).ratio() for label in labels]
        matched.append(labels[scores.index(max(scores))])
    return matched


def is_valid_url(path: str) -> bool:
    try:
        parsed = urlparse(path)
    except ValueError:
        return False
    return bool(parsed.scheme and parsed.netloc)


def is_preload_needed(url: str) -> bool:
    """Whether a task's data value names a file to fetch (an upload, local or cloud storage, a URL, a path)."""
    if url.startswith("upload") or url.startswith("/upload"):
        url = "/data" + ("" if url.startswith("/") else "/") + url
    return (url.startswith("/data/upload") or (url.startswith("/data/") and "?d=" in url)
            or url.startswith(("s3:", "gs:", "azure-blob:")) or is_valid_url(url) or os.path.exists(url))


class InMemoryLRUDictCache:
    """A small LRU dict (label_studio_ml's, for a loaded model or two)."""

    def __init__(self, capacity: int = 1) -> None:
        self.cache: OrderedDict[Any, Any] = OrderedDict()
        self.capacity = capacity

    def __contains__(self, item: Any) -> bool:
        return item in self.cache

    def get(self, key: Any) -> Any:
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        return None

    def put(self, key: Any, value: Any) -> None:
        if key in self.cache:
            self.cache.move_to_end(key)
        elif len(self.cache) >= self.capacity:
            self.cache.popitem(last=False)
        self.cache[key] = value

    def __str__(self) -> str:
        return str(self.cache)
