"""label_studio_ml.utils names that backends import, under railyard_ml.utils: docs/ml-backend.md says replacing
`label_studio_ml` by `railyard_ml` in the imports is the whole change, but 1.0.x's image examples import
get_image_local_path / get_image_size (and 2.x's match_labels, InMemoryLRUDictCache), which were missing: the
backend failed at import. A 1.0.x-style image backend written as those examples are, served through init_app."""

from __future__ import annotations

import base64
import importlib.util
import sys

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response
from railyard_ml.api import init_app

from tests.ml_backend.conftest import serve

SCRIPT = '''
from railyard_ml.model import LabelStudioMLBase
from railyard_ml.utils import (InMemoryLRUDictCache, get_choice, get_image_local_path, get_image_size,
                               get_single_tag_keys, is_skipped, match_labels)


class SizeClassifier(LabelStudioMLBase):
    """1.0.x style: the image's width decides; the label by match_labels, the loaded sizes kept in an LRU."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.from_name, self.to_name, self.value, self.classes = get_single_tag_keys(
            self.parsed_label_config, "Choices", "Image")
        self.sizes = InMemoryLRUDictCache(2)

    def predict(self, tasks, **kwargs):
        predictions = []
        for task in tasks:
            path = get_image_local_path(task["data"][self.value])
            width, height = get_image_size(path)
            self.sizes.put(path, (width, height))
            [label] = match_labels("wide" if width > height else "tall", self.classes)
            predictions.append({"result": [{"from_name": self.from_name, "to_name": self.to_name,
                                            "type": "choices", "value": {"choices": [label]}}],
                                "score": 1.0, "size": [width, height]})
        return predictions
'''

CONFIG = ('<View><Image name="image" value="$image"/><Choices name="shape" toName="image">'
          '<Choice value="Wide"/><Choice value="Tall"/></Choices></View>')


def picture(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_1x_image_backend_importing_label_studio_ml_utils_runs(tmp_path, monkeypatch):
    script = tmp_path / "size_classifier.py"
    script.write_text(SCRIPT)
    spec = importlib.util.spec_from_file_location("size_classifier", script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "size_classifier", module)
    spec.loader.exec_module(module)  # ImportError before: get_image_local_path, get_image_size, ...
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))

    folder = tmp_path / "media"
    folder.mkdir()
    (folder / "wide.png").write_bytes(picture(30, 10))
    tall = "data:image/png;base64," + base64.b64encode(picture(10, 30)).decode()
    tasks = [{"id": 1, "data": {"image": f"/data/local-files/?d={folder}/wide.png"}},  # Label Studio's local files
             {"id": 2, "data": {"image": tall}},  # downloaded once into $MODEL_DIR/downloads
             {"id": 3, "data": {"image": f"/data/wide.png?d={folder}"}}]  # 1.0.x's local files URL
    with serve(init_app(module.SizeClassifier, model_dir=tmp_path / "models")) as url:
        answer = httpx.post(f"{url}/predict", json={"tasks": tasks, "project": "1.1700000000",
                                                    "label_config": CONFIG}, timeout=30)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["result"][0]["value"]["choices"] for r in results] == [["Wide"], ["Tall"], ["Wide"]]
    assert [r["size"] for r in results] == [[30, 10], [10, 30], [30, 10]]
    assert list((tmp_path / "models" / "downloads").iterdir())  # the data: URI's file


def test_the_other_helpers_answer_as_label_studio_mls():
    from railyard_ml.utils import InMemoryLRUDictCache, is_preload_needed, is_valid_url, match_labels

    assert match_labels("Positve\nnegative", ["Positive", "Negative"]) == ["Positive", "Negative"]
    assert is_valid_url("https://ls.example/data/upload/1/a.png") and not is_valid_url("/data/upload/1/a.png")
    assert is_preload_needed("upload/1/a.png") and is_preload_needed("s3://bucket/a.png")
    assert not is_preload_needed("just some text")
    cache = InMemoryLRUDictCache(2)
    for key in "abc":
        cache.put(key, key.upper())
    assert "a" not in cache and cache.get("b") == "B" and cache.get("a") is None


def test_label_studio_s_host_is_found_as_label_studio_ml_finds_it(tmp_path, monkeypatch):
    # Docker sets HOSTNAME to the container's id in every container: get_env('HOSTNAME') read it before
    # LABEL_STUDIO_HOSTNAME (label_studio_ml reads LABEL_STUDIO_ first), so an upload's URL went to '<id>/data/...'
    from railyard_ml.utils import get_env, get_local_path

    seen = []
    app = FastAPI()

    @app.get("/data/upload/1/a.png")
    async def upload(request: Request) -> Response:
        seen.append(request.headers.get("authorization"))
        return Response(picture(4, 2), media_type="image/png")

    monkeypatch.setenv("HOSTNAME", "3f2a9c1b7d0e")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "t0k")
    with serve(app) as url:
        monkeypatch.setenv("LABEL_STUDIO_HOSTNAME", url)
        assert get_env("HOSTNAME") == url
        path = get_local_path("/data/upload/1/a.png", cache_dir=str(tmp_path / "cache"))
    assert open(path, "rb").read() == picture(4, 2) and seen == ["Token t0k"]

    # no Label Studio URL known (only Docker's HOSTNAME): label_studio_ml's FileNotFoundError, not httpx's
    # 'Request URL is missing an http:// or https:// protocol'
    monkeypatch.delenv("LABEL_STUDIO_HOSTNAME")
    with pytest.raises(FileNotFoundError, match=r"/data/upload/1/b\.png.*LABEL_STUDIO_HOSTNAME"):
        get_local_path("/data/upload/1/b.png", cache_dir=str(tmp_path / "cache"))


def test_a_backends_own_get_local_path_names_the_variable_it_reads_the_host_from(tmp_path, monkeypatch):
    # a backend instance reads Label Studio's URL from LABEL_STUDIO_URL (or LABEL_STUDIO_HOST), railyard_ml.utils'
    # get_local_path from LABEL_STUDIO_HOSTNAME (label_studio_ml 1.0.x's): the one message named
    # LABEL_STUDIO_HOSTNAME first to both, a variable this path never reads
    from railyard_ml.model import LabelStudioMLBase

    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_HOST", "LABEL_STUDIO_HOSTNAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"/data/upload/1/b\.png") as refused:
        LabelStudioMLBase().get_local_path("/data/upload/1/b.png")
    assert "set LABEL_STUDIO_URL" in str(refused.value) and "LABEL_STUDIO_HOSTNAME" not in str(refused.value)
