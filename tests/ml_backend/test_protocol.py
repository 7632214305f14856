"""The Label Studio ML backend protocol, route by route, against the real server (uvicorn on 127.0.0.1)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from railyard_ml import LabelStudioMLBase, ModelResponse, init_app

from tests.ml_backend.conftest import TEXT_CONFIG, annotation_event, serve, versions, wait_until
from tests.ml_backend.ls1_style_backend import MajorityModel
from tests.ml_backend.ls2_style_backend import KeywordModel

PROJECT = "1.1764547200"  # Label Studio names projects "<id>.<created timestamp>"

GOING = ("running", "queued")  # a run not ended yet, as /versions lists it


def tasks(*texts: str) -> list[dict]:
    return [{"id": i + 1, "data": {"text": text}, "project": 1} for i, text in enumerate(texts)]


def predict(url: str, items: list[dict], **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/predict", json={"tasks": items, "project": PROJECT, "label_config": TEXT_CONFIG,
                                              "params": {"login": None, "password": None, "context": None}},
                      timeout=30, **kwargs)


@pytest.fixture
def keyword_backend(model_dir):
    with serve(init_app(KeywordModel, model_dir=model_dir)) as url:
        yield url


def test_health_names_the_model(keyword_backend):
    for path in ("/health", "/"):
        answer = httpx.get(keyword_backend + path)
        assert answer.status_code == 200
        assert answer.json()["status"] == "UP" and answer.json()["model_class"] == "KeywordModel"
    assert httpx.get(keyword_backend + "/metrics").json() == {}


def test_setup_answers_the_model_version_and_keeps_extra_params(keyword_backend, model_dir):
    answer = httpx.post(f"{keyword_backend}/setup", json={
        "project": PROJECT, "schema": TEXT_CONFIG, "hostname": "http://127.0.0.1:8080", "access_token": "t0k",
        "extra_params": {"threshold": 0.5}})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"model_version": "keywords-v0.0.1"}  # what the model's setup() named
    from railyard_ml.store import Store

    assert Store(model_dir).get("1", "extra_params") == '{"threshold": 0.5}'
    assert Store(model_dir).get("1", "label_config") == TEXT_CONFIG
    assert "t0k" not in (model_dir / "railyard-ml.db").read_bytes().decode("latin-1")  # the token stays in memory


def test_predict_answers_one_result_per_task_in_order(keyword_backend):
    answer = predict(keyword_backend, tasks("a", "b", "c"))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_version"] == "keywords-v0.0.1"
    assert len(body["results"]) == 3
    for result in body["results"]:
        assert result["model_version"] == "keywords-v0.0.1" and "score" in result
        assert result["result"][0]["from_name"] == "sentiment" and result["result"][0]["to_name"] == "text"


def test_webhook_trains_in_the_background_and_the_version_moves_on(keyword_backend):
    first = httpx.post(f"{keyword_backend}/webhook", json=annotation_event(1, "sunny happy day", "Positive"))
    assert first.status_code == 201 and first.json()["status"] == "ok" and first.json()["job_id"]
    wait_until(lambda: versions(keyword_backend)["current_version"] != "keywords-v0.0.1")
    second = httpx.post(f"{keyword_backend}/webhook", json=annotation_event(2, "rainy sad night", "Negative"))
    assert second.status_code == 201
    listed = wait_until(lambda: (lambda v: v if len(v["versions"]) == 3 else None)(versions(keyword_backend)))
    assert listed["versions"] == ["keywords-v0.0.1", "keywords-v0.1.0", "keywords-v0.2.0"]
    assert listed["current_version"] == "keywords-v0.2.0"
    assert [run["status"] for run in listed["runs"]] == ["ok", "ok"]

    body = predict(keyword_backend, tasks("a happy sunny morning", "a sad rainy evening")).json()
    assert [r["result"][0]["value"]["choices"] for r in body["results"]] == [["Positive"], ["Negative"]]
    assert {r["model_version"] for r in body["results"]} == {"keywords-v0.2.0"}
    # Label Studio's setup (called before every "retrieve predictions") reports the trained version too
    assert httpx.post(f"{keyword_backend}/setup", json={"project": PROJECT, "schema": TEXT_CONFIG}).json() == {
        "model_version": "keywords-v0.2.0"}


def test_a_fit_that_raises_leaves_the_previous_model_serving(keyword_backend):
    httpx.post(f"{keyword_backend}/webhook", json=annotation_event(1, "sunny happy", "Positive"))
    wait_until(lambda: versions(keyword_backend)["current_version"] == "keywords-v0.1.0")
    before = predict(keyword_backend, tasks("sunny")).json()

    answer = httpx.post(f"{keyword_backend}/webhook", json=annotation_event(2, "sunny boom", "Explode"))
    assert answer.status_code == 201
    listed = wait_until(lambda: (lambda v: v if len(v["runs"]) == 2 and v["runs"][1]["status"] not in GOING
                                 else None)(versions(keyword_backend)))
    assert listed["runs"][1]["status"] == "failed" and "asked to fail" in listed["runs"][1]["error"]
    assert listed["current_version"] == "keywords-v0.1.0" and listed["versions"][-1] == "keywords-v0.1.0"
    assert predict(keyword_backend, tasks("sunny")).json() == before


def test_other_webhook_events_are_acknowledged_and_ignored(keyword_backend):
    for action in ("PROJECT_UPDATED", "TASKS_CREATED", "SOMETHING_NEW"):
        answer = httpx.post(f"{keyword_backend}/webhook", json={"action": action, "project": {"id": 1}})
        assert answer.status_code == 200 and answer.json() == {"status": "Unknown event"}
    assert versions(keyword_backend)["runs"] == []


BAD = [
    ("/predict", b"not json", "invalid_request", "JSON"),
    ("/predict", b"[1, 2]", "invalid_request", "object"),
    ("/predict", b"{}", "invalid_request", "tasks"),
    ("/predict", b'{"tasks": "x"}', "invalid_request", "tasks"),
    ("/predict", b'{"tasks": [1, 2]}', "invalid_request", "tasks.0"),
    ("/predict", b'{"tasks": [{"id": 1}], "label_config": "<View"}', "invalid_label_config", "XML"),
    ("/predict", b'{"tasks": [{"id": 1}], "label_config": "<!DOCTYPE x [<!ENTITY a \\"b\\">]><View/>"}',
     "invalid_label_config", "entities"),
    ("/predict", b'{"tasks": [{"id": 1}], "project": "../etc"}', "invalid_request", "project"),
    ("/setup", b'{"schema": "<View/>"}', "invalid_request", "project"),
    ("/setup", b'{"project": "1.2", "schema": "<View><Text"}', "invalid_label_config", "XML"),
    ("/webhook", b'{"project": {"id": 1}}', "invalid_request", "action"),
    ("/webhook", b'{"action": "ANNOTATION_CREATED"}', "invalid_request", "project"),
    ("/webhook", b'{"action": "START_TRAINING", "project": {"label_config": "<View/>"}}', "invalid_request",
     "project.id"),
    ("/train", b'{"annotations": []}', "invalid_request", "annotations"),
    ("/train", b'{"annotations": [{"data": {}}]}', "invalid_request", "id"),
]


@pytest.mark.parametrize(("path", "body", "code", "mentions"), BAD)
def test_bad_payloads_answer_400_with_a_reason_and_change_nothing(keyword_backend, path, body, code, mentions):
    answer = httpx.post(keyword_backend + path, content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == code and mentions in answer.json()["msg"]
    listed = versions(keyword_backend)
    assert listed["runs"] == [] and listed["current_version"] == "0.0.1"  # not even the model was built


def test_versions_without_a_project_lists_every_project(keyword_backend):
    assert httpx.get(f"{keyword_backend}/versions").json()["versions"] == []
    predict(keyword_backend, tasks("x"))
    httpx.post(f"{keyword_backend}/webhook", json=annotation_event(1, "sunny", "Positive", project=7))
    wait_until(lambda: versions(keyword_backend, 7)["current_version"] == "keywords-v0.1.0")
    # Label Studio 1.23 sends GET /versions without the project its client code names
    listed = httpx.get(f"{keyword_backend}/versions").json()
    assert listed["versions"] == ["keywords-v0.0.1", "keywords-v0.1.0"]
    assert listed["projects"]["1"]["current_version"] == "keywords-v0.0.1"
    assert listed["projects"]["7"]["current_version"] == "keywords-v0.1.0"
    # a JSON body naming the project narrows it down
    answer = httpx.request("GET", f"{keyword_backend}/versions", json={"project": "7.1764547200"})
    assert answer.status_code == 200 and answer.json()["versions"] == ["keywords-v0.0.1", "keywords-v0.1.0"]
    assert httpx.get(f"{keyword_backend}/versions", params={"project": "../x"}).status_code == 400


def test_basic_auth_guards_every_route(model_dir):
    with serve(init_app(KeywordModel, basic_auth_user="label", basic_auth_pass="studio", model_dir=model_dir)) as url:
        for method, path in (("GET", "/health"), ("POST", "/predict"), ("POST", "/setup"), ("POST", "/webhook"),
                             ("POST", "/train"), ("GET", "/versions")):
            for auth in (None, ("label", "wrong"), ("other", "studio")):
                answer = httpx.request(method, url + path, json={}, auth=auth)
                assert answer.status_code == 401, (path, auth)
                assert answer.json()["code"] == "unauthorized" and "Basic" in answer.headers["www-authenticate"]
        assert httpx.get(f"{url}/health", auth=("label", "studio")).status_code == 200
        assert predict(url, tasks("x"), auth=("label", "studio")).status_code == 200
        assert httpx.get(f"{url}/health", headers={"Authorization": "Basic !!notbase64"}).status_code == 401


class Broken(LabelStudioMLBase):
    def predict(self, tasks, context=None, **kwargs):
        if tasks[0]["data"]["text"] == "raise":
            raise ValueError("cannot read this task")
        if tasks[0]["data"]["text"] == "short":
            return [{"result": []}]
        return [{"score": 1.0} for _ in tasks]


def test_model_failures_are_5xx_naming_the_problem(model_dir):
    with serve(init_app(Broken, model_dir=model_dir)) as url:
        answer = predict(url, tasks("raise"))
        assert answer.status_code == 500 and answer.json() == {"code": "model_error",
                                                               "msg": "ValueError: cannot read this task"}
        answer = predict(url, tasks("short", "b"))
        assert answer.status_code == 500 and answer.json()["code"] == "bad_model_output"
        assert "1 predictions for 2 tasks" in answer.json()["msg"]
        answer = predict(url, tasks("no result"))
        assert answer.status_code == 500 and "'result'" in answer.json()["msg"]
        # a model without fit(): annotations are acknowledged, no run starts
        answer = httpx.post(f"{url}/webhook", json=annotation_event(1, "x", "Positive"))
        assert answer.status_code == 200 and versions(url)["runs"] == []


class NeedsAFile(LabelStudioMLBase):
    """A constructor that fails for something no request can supply (reading no labeling config)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        raise FileNotFoundError("weights.bin")


class ReadsTheConfigThenFails(LabelStudioMLBase):
    """A constructor that reads the labeling config, then fails for something else."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.from_name = next(iter(self.parsed_label_config))
        raise RuntimeError("the GPU is away")


class OptionalConfigThenFails(LabelStudioMLBase):
    """Needs no labeling config (a default name without one), looks whether it has one, then its predict fails for
    something no config changes."""

    def predict(self, tasks, **kwargs):
        self.from_name = next(iter(self.parsed_label_config), "label") if self.parsed_label_config else "label"
        raise RuntimeError("the GPU is away")


class ReadsInPredict(LabelStudioMLBase):
    """A 1.x-style backend that reads its labeling config in predict (in the server's thread pool), not in __init__."""

    def predict(self, tasks, **kwargs):
        from_name = list(self.parsed_label_config)[0]
        return [{"result": [{"from_name": from_name}]} for _ in tasks]


def test_a_missing_or_unfit_labeling_config_is_a_400_naming_it_and_other_constructor_failures_stay_500(model_dir):
    """A model built or asked to predict without a labeling config (none sent, none set up for the project) answered
    500 model_error ("IndexError: list index out of range" for a 1.x backend's `list(self.parsed_label_config
    .items())[0]`), although the request could have carried it. Label Studio sends the project's config with every
    /predict and /setup (label_studio_ml's own server builds the model from it and answers 500 for anything that
    raises); a caller that left it out now gets 400 label_config_required naming it and what the model said, and a
    config lacking the control the model asks for 400 label_config_mismatch. Anything else stays 500."""
    bare = {"tasks": tasks("good film"), "project": PROJECT}
    with serve(init_app(MajorityModel, model_dir=model_dir / "ls1")) as url:
        answer = httpx.post(f"{url}/predict", json=bare, timeout=30)
        assert answer.status_code == 400 and answer.json()["code"] == "label_config_required", answer.text
        msg = answer.json()["msg"]
        assert "IndexError" in msg and "label_config" in msg and "/setup" in msg and "'1'" in msg, msg
        setup = httpx.post(f"{url}/setup", json={"project": PROJECT}, timeout=30)  # /setup without its schema
        assert setup.status_code == 400 and setup.json()["code"] == "label_config_required", setup.text
        assert predict(url, tasks("good film")).status_code == 200  # with the config: served, and kept
        assert httpx.post(f"{url}/predict", json=bare, timeout=30).status_code == 200
    with serve(init_app(KeywordModel, model_dir=model_dir / "ls2")) as url:
        # its predict asks label_interface for <Choices> over <Text>: no config, then one without them
        answer = httpx.post(f"{url}/predict", json=bare, timeout=30)
        assert answer.status_code == 400 and answer.json()["code"] == "label_config_required", answer.text
        assert "no <Choices> over <Text>" in answer.json()["msg"], answer.text
        labels = '<View><Text name="t" value="$text"/><Labels name="l" toName="t"><Label value="A"/></Labels></View>'
        answer = httpx.post(f"{url}/predict", json={**bare, "label_config": labels}, timeout=30)
        assert answer.status_code == 400 and answer.json()["code"] == "label_config_mismatch", answer.text
        assert "no <Choices> over <Text>" in answer.json()["msg"], answer.text
        assert predict(url, tasks("good film")).status_code == 200
    for model, said in ((NeedsAFile, "FileNotFoundError: weights.bin"), (ReadsTheConfigThenFails,
                                                                          "RuntimeError: the GPU is away")):
        with serve(init_app(model, model_dir=model_dir / model.__name__)) as url:
            answer = httpx.post(f"{url}/predict", json=bare if model is NeedsAFile else {
                **bare, "label_config": TEXT_CONFIG}, timeout=30)
            assert answer.status_code == 500 and answer.json() == {"code": "model_error", "msg": said}, answer.text
    with serve(init_app(ReadsTheConfigThenFails, model_dir=model_dir / "reads-none")) as url:
        answer = httpx.post(f"{url}/predict", json=bare, timeout=30)  # next(iter({})): it needs the config
        assert answer.status_code == 400 and answer.json()["code"] == "label_config_required", answer.text
    with serve(init_app(ReadsInPredict, model_dir=model_dir / "reads-in-predict")) as url:
        answer = httpx.post(f"{url}/predict", json=bare, timeout=30)  # read in the thread pool: seen all the same
        assert answer.status_code == 400 and answer.json()["code"] == "label_config_required", answer.text
        assert "IndexError" in answer.json()["msg"], answer.text
        assert predict(url, tasks("good film")).status_code == 200
    with serve(init_app(OptionalConfigThenFails, model_dir=model_dir / "optional")) as url:
        # it read the config only to see it has none (it needs none); its failure is its own: not a 400 telling the
        # caller to send a config (it was, before this was checked: any failure after a read counted)
        answer = httpx.post(f"{url}/predict", json=bare, timeout=30)
        assert answer.status_code == 500 and answer.json() == {
            "code": "model_error", "msg": "RuntimeError: the GPU is away"}, answer.text


class Gated(LabelStudioMLBase):
    """Counts how many of its fits run at once, per project; each fit waits for the test to open the gate."""

    gate = threading.Event()
    lock = threading.Lock()
    running: dict[str, int] = {}
    most: dict[str, int] = {}
    fits: dict[str, int] = {}

    def predict(self, tasks, context=None, **kwargs):
        return [{"result": []} for _ in tasks]

    def fit(self, event, data, **kwargs):
        with Gated.lock:
            Gated.running[self.project_id] = Gated.running.get(self.project_id, 0) + 1
            Gated.most[self.project_id] = max(Gated.most.get(self.project_id, 0), Gated.running[self.project_id])
            Gated.fits[self.project_id] = Gated.fits.get(self.project_id, 0) + 1
        Gated.gate.wait(60)
        time.sleep(0.05)
        with Gated.lock:
            Gated.running[self.project_id] -= 1
        return {"fit": Gated.fits[self.project_id]}


def test_fits_run_one_at_a_time_per_project_and_a_burst_folds(model_dir):
    with serve(init_app(Gated, model_dir=model_dir)) as url:
        # every webhook is answered while the first fit is still blocked: fit never runs inside the request
        for i in range(6):
            answer = httpx.post(f"{url}/webhook", json=annotation_event(i, "t", "Positive", project=1), timeout=10)
            assert answer.status_code == 201
        for i in range(2):
            assert httpx.post(f"{url}/webhook", json=annotation_event(i, "t", "Positive", project=2)).status_code == 201
        wait_until(lambda: Gated.running.get("1") == 1 and Gated.running.get("2") == 1)
        assert not Gated.gate.is_set() and Gated.fits == {"1": 1, "2": 1}
        # the runs waiting behind the blocked one are listed as queued: a client polling /versions for "no run
        # going" does not stop before them (they were invisible until they started)
        assert [run["status"] for run in versions(url, 1)["runs"]] == ["running"] + ["queued"] * 5
        assert [run["status"] for run in versions(url, 2)["runs"]] == ["running", "queued"]
        Gated.gate.set()
        wait_until(lambda: all(run["status"] not in GOING for p in (1, 2) for run in versions(url, p)["runs"])
                   and Gated.fits.get("1", 0) >= 2 and Gated.fits.get("2", 0) >= 2, timeout=60)
        assert Gated.most == {"1": 1, "2": 1}
        # the five events that arrived during project 1's first run became one more run on the newest data
        assert Gated.fits["1"] == 2 and len(versions(url, 1)["runs"]) == 2
        assert versions(url, 1)["current_version"] == "0.2.0"


def test_trained_state_survives_a_restart_and_legacy_train_works(model_dir):
    annotated = [{"id": i, "data": {"text": f"t{i}"},
                  "annotations": [{"id": 10 + i, "result": [{"from_name": "sentiment", "to_name": "text",
                                                             "type": "choices", "value": {"choices": [label]}}]}]}
                 for i, label in enumerate(["Negative", "Negative", "Positive"])]
    with serve(init_app(MajorityModel, model_dir=model_dir)) as url:
        assert predict(url, tasks("x")).json()["results"][0]["result"][0]["value"]["choices"] == ["Positive"]
        answer = httpx.post(f"{url}/train", json={"annotations": annotated, "project": PROJECT,
                                                  "label_config": TEXT_CONFIG})
        assert answer.status_code == 201 and answer.json()["job"]
        wait_until(lambda: versions(url)["current_version"] == "0.1.0")
    with serve(init_app(MajorityModel, model_dir=model_dir)) as url:  # a new process would see the same
        assert versions(url)["versions"] == ["0.0.1", "0.1.0"]
        result = predict(url, tasks("x")).json()["results"][0]
        assert result["result"][0]["value"]["choices"] == ["Negative"] and result["model_version"] == "0.1.0"
        assert result["score"] == pytest.approx(2 / 3)


def test_runs_a_stopped_backend_left_queued_or_running_end_failed_and_new_ids_follow_them(model_dir):
    """A backend stopped (or crashed) with runs queued and one running: their queue was in its memory, so the next
    process must not list them as going for ever (a client waiting for no run going would never stop). Its job ids
    keep increasing past the file's, even after the clock went back (an id is its run's key and /versions' order)."""
    from railyard_ml.store import Store

    ahead = str(time.time_ns() // 1000 + 3_600_000_000)  # written by a process whose clock was an hour ahead
    store = Store(model_dir)
    store.start_run("1", "1700000000000001", "ANNOTATION_CREATED")
    store.queue_run("1", ahead, "ANNOTATION_CREATED")
    with serve(init_app(MajorityModel, model_dir=model_dir)) as url:
        runs = versions(url, 1)["runs"]
        assert [(run["job_id"], run["status"]) for run in runs] == [("1700000000000001", "failed"), (ahead, "failed")]
        assert all(run["error"].startswith("interrupted") and run["finished_at"] for run in runs)
        answer = httpx.post(f"{url}/webhook", json=annotation_event(1, "t", "Negative"), timeout=10)
        assert answer.status_code == 201 and int(answer.json()["job_id"]) > int(ahead)
        wait_until(lambda: all(run["status"] not in GOING for run in versions(url, 1)["runs"]))
        assert [run["status"] for run in versions(url, 1)["runs"]] == ["failed", "failed", "ok"]


def test_a_second_process_on_one_model_directory_is_refused_and_ends_no_run_of_the_first(model_dir):
    """A serving process takes its directory's queued and running runs for interrupted at its start: a second
    process on the same model directory marked the first one's live runs failed (and both trained into one state).
    The second is refused at its start, naming the first; the first's runs are untouched. The kernel's lock goes
    with its holder: once the first process ends, a new one starts."""
    import asyncio
    import subprocess
    import sys

    from railyard_ml.store import ModelDirInUse, Store

    store = Store(model_dir)
    store.start_run("1", "1700000000000001", "ANNOTATION_CREATED")  # the first process's run, going
    first = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from railyard_ml.store import claim_model_dir; "
         "claim_model_dir(sys.argv[1]); print('serving', flush=True); time.sleep(120)", str(model_dir)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline() == "serving\n"
        app = init_app(MajorityModel, model_dir=model_dir)

        async def start() -> None:
            async with app.router.lifespan_context(app):
                pass

        with pytest.raises(ModelDirInUse, match=f"in use by another railyard-ml process \\(pid {first.pid}\\)"):
            asyncio.run(start())
        assert [run["status"] for run in store.runs("1")] == ["running"]
    finally:
        first.kill()
        first.wait()
    with serve(init_app(MajorityModel, model_dir=model_dir)) as url:  # the first gone: its run was interrupted
        assert [run["status"] for run in versions(url, 1)["runs"]] == ["failed"]
        with serve(init_app(MajorityModel, model_dir=model_dir)):  # a second app of this process shares the claim
            pass


def test_a_run_that_fails_outside_fit_ends_failed_and_the_next_one_runs(model_dir):
    """The run's folder cannot be made (here a file holds its place; a full disk does the same): the run was
    listed running for ever and its training loop died, so runs queued behind it were never run either."""
    with serve(init_app(MajorityModel, model_dir=model_dir)) as url:
        (model_dir / "1").write_text("not a folder")
        assert httpx.post(f"{url}/webhook", json=annotation_event(1, "t", "Negative"), timeout=10).status_code == 201
        wait_until(lambda: all(run["status"] not in GOING for run in versions(url, 1)["runs"]))
        [run] = versions(url, 1)["runs"]
        assert run["status"] == "failed" and run["error"] and run["finished_at"]
        (model_dir / "1").unlink()
        assert httpx.post(f"{url}/webhook", json=annotation_event(2, "t", "Negative"), timeout=10).status_code == 201
        wait_until(lambda: [r["status"] for r in versions(url, 1)["runs"]] == ["failed", "ok"])
        assert versions(url, 1)["current_version"] == "0.1.0"


class Held(LabelStudioMLBase):
    """Each fit waits for the test to open the gate."""

    gate = threading.Event()
    started = threading.Event()

    def predict(self, tasks, context=None, **kwargs):
        return [{"result": []} for _ in tasks]

    def fit(self, event, data, **kwargs):
        Held.started.set()
        Held.gate.wait(60)
        return {"fit": 1}


def test_runs_folded_into_one_end_failed_when_the_store_cannot_drop_them(model_dir, monkeypatch):
    """Runs folded into a later one are dropped from the list; when the store failed to drop them (SQLite: a full
    disk, a locked or damaged file), the later run ended failed and they stayed listed queued for ever, so a client
    polling /versions for "no run going" never stopped. They end failed too, saying into which run they were folded;
    the runs after them run."""
    import sqlite3

    from railyard_ml.store import Store

    def failing(self, project_id, job_ids):
        raise sqlite3.OperationalError("disk I/O error")

    with serve(init_app(Held, model_dir=model_dir)) as url:
        for i in range(4):  # the first runs and waits; the other three fold into one run
            assert httpx.post(f"{url}/webhook", json=annotation_event(i, "t", "Positive"), timeout=10).status_code \
                == 201
            Held.started.wait(30)
        runs = versions(url, 1)["runs"]
        assert [run["status"] for run in runs] == ["running", "queued", "queued", "queued"]
        monkeypatch.setattr(Store, "drop_queued", failing)
        Held.gate.set()
        wait_until(lambda: all(run["status"] not in GOING for run in versions(url, 1)["runs"]), timeout=20)
        first, *folded, last = versions(url, 1)["runs"]
        assert first["status"] == "ok"
        assert (last["status"], last["error"]) == ("failed", "OperationalError: disk I/O error") and last["finished_at"]
        for run in folded:
            assert run["status"] == "failed" and run["finished_at"]
            assert run["error"] == f"folded into run {last['job_id']}, which could not run: OperationalError: disk " \
                                   "I/O error"
        monkeypatch.undo()
        assert httpx.post(f"{url}/webhook", json=annotation_event(9, "t", "Positive"), timeout=10).status_code == 201
        wait_until(lambda: [r["status"] for r in versions(url, 1)["runs"]] == ["ok", "failed", "failed", "failed",
                                                                                 "ok"])


def test_webhook_annotations_reach_a_1x_style_fit(model_dir):
    with serve(init_app(MajorityModel, model_dir=model_dir)) as url:
        for task_id, label in ((1, "Negative"), (2, "Negative"), (3, "Positive")):
            httpx.post(f"{url}/webhook", json=annotation_event(task_id, "t", label))
        # an update replaces the annotation it names, a deletion removes it
        httpx.post(f"{url}/webhook", json=annotation_event(3, "t", "Negative", action="ANNOTATION_UPDATED"))
        httpx.post(f"{url}/webhook", json={"action": "ANNOTATIONS_DELETED", "project": {"id": 1},
                                           "annotations": [{"id": 1001}]})
        httpx.post(f"{url}/webhook", json={"action": "START_TRAINING", "project": {"id": 1,
                                                                                   "label_config": TEXT_CONFIG}})
        wait_until(lambda: all(r["status"] not in GOING for r in versions(url)["runs"])
                   and predict(url, tasks("x")).json()["results"][0]["score"] == 1.0)
        result = predict(url, tasks("x")).json()["results"][0]
        assert result["result"][0]["value"]["choices"] == ["Negative"]
        from railyard_ml.store import Store

        kept = Store(model_dir).annotated_tasks("1")
        assert [(t["id"], [a["id"] for a in t["annotations"]]) for t in kept] == [(2, [1002]), (3, [1003])]


class ForeignPredictions(LabelStudioMLBase):
    """Answers with another library's pydantic prediction type (as label-studio-sdk's PredictionValue)."""

    def predict(self, tasks, context=None, **kwargs):
        from pydantic import BaseModel

        class OtherPredictionValue(BaseModel):
            model_version: str | None = None
            score: float = 0.0
            result: list = []

        return ModelResponse(predictions=[OtherPredictionValue(score=0.25, result=[{"type": "choices"}])
                                          for _ in tasks])


def test_predictions_of_other_pydantic_types_and_oversized_bodies(model_dir, monkeypatch):
    import railyard_ml.api

    with serve(init_app(ForeignPredictions, model_dir=model_dir)) as url:
        body = predict(url, tasks("a", "b")).json()
        assert body["results"] == [{"model_version": "0.0.1", "score": 0.25, "result": [{"type": "choices"}]}] * 2
        monkeypatch.setattr(railyard_ml.api, "MAX_BODY", 1000)
        answer = predict(url, tasks("x" * 2000))
        assert answer.status_code == 413 and answer.json()["code"] == "payload_too_large"

        def chunks():  # no content-length: the limit holds while reading
            yield b'{"tasks": ['
            for _ in range(100):
                yield b'{"id": 1, "data": {"text": "xxxxxxxxxxxxxxxxxxxx"}},'
            yield b'{"id": 2}]}'

        answer = httpx.post(f"{url}/predict", content=chunks())
        assert answer.status_code == 413
