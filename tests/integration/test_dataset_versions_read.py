"""A seed "dataset version" (`{dataset_id, version_id}`) is read as the project version saved the dataset, on the real
stack: the lineage service lists and serves a dataset's files as a version saved them (datasets/list_files,
get_file_info, download_file with `version_id`); the training-data reference is computed from those files, not from
the dataset as it is now; a version of another project or workspace, or one saved before the dataset existed, is a
404 naming why, and set_training_data, the feedback loop and continuous training then change nothing; a continuous
training run reads a dataset the feedback loop writes into at the loop's newest version."""

from __future__ import annotations

import asyncio
import io
import time
import zipfile

import asyncpg
import pytest
from railyard_client import Lineage, Orchestrations

from tests.image_models import digit_png, digits_classifier_onnx, digits_image_config
from tests.integration.conftest import make_account, post, undeploy_all
from tests.integration.conftest import sdk_client as sdk

pytestmark = pytest.mark.integration


class HeldLocks:
    """One database session of the test's, on its own event loop, holding locks a service waits for."""

    def __init__(self, stack) -> None:
        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(asyncpg.connect(stack.settings().postgres.dsn))

    def hold(self, sql: str) -> None:
        self.loop.run_until_complete(self.conn.execute(sql))

    def value(self, sql: str, *args):
        return self.loop.run_until_complete(self.conn.fetchval(sql, *args))

    def close(self) -> None:
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()


@pytest.fixture(scope="module")
def owner(stack, admin):
    account = make_account(stack, admin, "dsver")
    yield account
    undeploy_all(stack, account)


@pytest.fixture(scope="module")
def world(stack, owner) -> dict:
    """A deployed digits classifier, and a project whose `train` dataset changed after its version `saved`: `b.png`
    was replaced (another digit, another label) and `c.png` added. `before` is a version saved before `train`
    existed."""
    client = sdk(stack, owner)
    model = client.upload_model("digits", digits_classifier_onnx(), progress=False)
    pipeline = client.build_pipeline("digits").add_model_step(model, image=digits_image_config())
    pipeline.deploy(replicas=1, cpus=0.5, wait=False)
    lineage = Lineage(client, owner.workspace_id)
    project = lineage.create_project("versioned")
    lineage.create_dataset(project["id"], "other", kind="images")
    before = lineage.create_version(project["id"], "before train")
    train = lineage.create_dataset(project["id"], "train", kind="images")
    images = {name: digit_png(index) for name, index in (("a", 0), ("b", 1), ("b2", 2), ("c", 3))}
    for name in ("a", "b"):
        data, label = images[name]
        lineage.upload_file(train["id"], data, name=f"{name}.png", labels={"label": str(label)})
    saved = lineage.create_version(project["id"], "two images")
    lineage.upload_file(train["id"], images["b2"][0], name="b.png", labels={"label": str(images["b2"][1])})
    lineage.upload_file(train["id"], images["c"][0], name="c.png", labels={"label": str(images["c"][1])})
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("main.py", "print('a recipe')\n")
    recipe = Orchestrations(client, owner.workspace_id).upload(archive.getvalue(), "recipe", progress=False)
    pipeline.deployment().wait_until_running(180)
    return {"client": client, "recipe": recipe, "lineage": lineage, "project": project, "train": train, "saved": saved,
            "before": before, "images": images, "deployment": client.get_deployment("digits")}


def test_lineage_serves_a_dataset_as_a_version_saved_it(stack, owner, world):
    lineage, train, saved, images = world["lineage"], world["train"], world["saved"], world["images"]
    now = {f["name"]: f["labels"] for f in lineage.files(train["id"])}
    assert now == {"a.png": {"label": str(images["a"][1])}, "b.png": {"label": str(images["b2"][1])},
                   "c.png": {"label": str(images["c"][1])}}
    then = {f["name"]: f["labels"] for f in lineage.files(train["id"], saved["id"])}
    assert then == {"a.png": {"label": str(images["a"][1])}, "b.png": {"label": str(images["b"][1])}}
    assert lineage.download_file(train["id"], "b.png", saved["id"]) == images["b"][0]
    assert lineage.download_file(train["id"], "b.png") == images["b2"][0]
    missing = post(stack, "datasets/get_file_info", owner.token,
                   {"dataset_id": train["id"], "name": "c.png", "version_id": saved["id"]})
    assert missing.status_code == 404 and "had no file 'c.png'" in missing.json()["msg"], missing.text
    early = post(stack, "datasets/list_files", owner.token, {"dataset_id": train["id"],
                                                             "version_id": world["before"]["id"]})
    assert early.status_code == 404 and "before the dataset had been created" in early.json()["msg"], early.text


def test_the_training_reference_reads_the_named_version(stack, admin, owner, world):
    deployment, train, saved, images = world["deployment"], world["train"], world["saved"], world["images"]
    deployment.set_training_data({"dataset_id": train["id"], "version_id": saved["id"]})
    ready = deployment.wait_for_training_data(60)
    assert ready["status"] == "ready" and ready["version_id"] == saved["id"], ready
    assert ready["images_total"] == 2  # a.png and b.png as saved, not c.png added since
    reference = deployment.get_stats("AGGREGATED_LABEL_DISTRIBUTION")["stats"]["reference"]
    assert reference["counts"] == {str(images["a"][1]): 1, str(images["b"][1]): 1}  # b.png's label as saved

    # versions that are not this dataset's: 404 naming why, the reference unchanged
    stranger = make_account(stack, admin, "dsverout")
    foreign_lineage = Lineage(sdk(stack, stranger), stranger.workspace_id)
    foreign = foreign_lineage.create_project("theirs")
    foreign_lineage.create_dataset(foreign["id"], "train", kind="images")
    theirs = foreign_lineage.create_version(foreign["id"])
    for version, message in ((theirs["id"], "is not a version of project"),
                             (world["before"]["id"], "before the dataset had been created"),
                             (999_999, "is not a version of project")):
        body = {"deployment": deployment.name, "dataset_version": {"dataset_id": train["id"], "version_id": version}}
        refused = post(stack, "deployments/set_training_data", owner.token, body)
        assert refused.status_code == 404 and message in refused.json()["msg"], refused.text
    after = deployment.training_data_status()
    assert (after["version_id"], after["images_total"], after["status"]) == (saved["id"], 2, "ready")


def test_foreign_versions_are_refused_and_a_training_run_reads_the_loops_newest_version(stack, owner, world):
    deployment, train, saved = world["deployment"], world["train"], world["saved"]
    deployment.setup_feedback_loop()
    bad = {"dataset_id": train["id"], "version_id": world["before"]["id"]}
    refused = post(stack, "deployments/attach_dataset_version_to_feedback_loop", owner.token,
                   {"deployment": deployment.name, "dataset_version": bad})
    assert refused.status_code == 404 and "before the dataset had been created" in refused.json()["msg"], refused.text
    assert deployment.list_feedback_loop_datasets() == []
    attached = deployment.attach_dataset_version_to_feedback_loop({"dataset_id": train["id"],
                                                                   "version_id": saved["id"]})
    assert [d["attached_version_id"] for d in attached["datasets"]] == [saved["id"]]

    setup = {"deployment": deployment.name, "project_id": world["project"]["id"], "threshold": 2,
             "experiment_parameters": {}, "orchestration_id": world["recipe"]["id"]}
    refused = post(stack, "deployments/setup_continuous_training", owner.token, setup | {"dataset_version": bad})
    assert refused.status_code == 404 and "before the dataset had been created" in refused.json()["msg"], refused.text
    assert deployment.retrieve_information()["continuous"]["training"] is None
    good = {"dataset_id": train["id"], "version_id": saved["id"]}
    made = post(stack, "deployments/setup_continuous_training", owner.token, setup | {"dataset_version": good})
    assert made.status_code == 200 and made.json()["training"]["datasets"] == {"train": good}, made.text

    # the loop writes two reviews into `train`: the run reads the loop's newest version there, not `saved`, which
    # holds none of them. The test opens the window where a run could read a stale version: it holds the
    # exporter's lock while both reviews arrive (so one round writes both), then keeps new project versions out,
    # so the loop's version of them waits while their files are in the dataset.
    held = HeldLocks(stack)
    try:
        assert held.value(f"SELECT pg_try_advisory_lock(hashtextextended('monitoring.feedback:{deployment.id}:"
                          f"{train['id']}', 0))")
        held.hold("BEGIN")
        held.hold("LOCK TABLE workflow_lineage.project_versions IN SHARE MODE")  # no new version, reads go on
        for index in (10, 11):
            png, _ = digit_png(index)
            deployment.review_prediction(deployment.predict_bytes(f"{index}.png", png)["id"])
        held.hold(f"SELECT pg_advisory_unlock(hashtextextended('monitoring.feedback:{deployment.id}:{train['id']}',"
                  " 0))")
        deadline = time.monotonic() + 30
        while held.value(
                "SELECT (SELECT count(*) FROM monitoring.feedback_exports WHERE deployment_id = $1 AND dataset_id = $2"
                " AND version_id IS NULL) <> 2 OR NOT EXISTS (SELECT 1 FROM monitoring.trainings WHERE deployment_id"
                " = $1)", deployment.id, train["id"]):
            assert time.monotonic() < deadline, deployment.check_feedback_loop_status()
            time.sleep(0.1)
        time.sleep(1.0)  # the starter looks every 0.25 s while the version is unmade: it must not start the run
        claimed = held.value("SELECT count(*) FROM monitoring.trainings WHERE deployment_id = $1 AND"
                             " run_claimed_at IS NOT NULL", deployment.id)
        assert not claimed, "a training run started before the loop's version of the reviews that triggered it"
    finally:
        held.close()  # the table lock goes with the session: the loop makes its version, then the run starts
    deadline = time.monotonic() + 60
    while not (tasks := [t for t in Orchestrations(world["client"], owner.workspace_id).tasks()
                         if (t["name"] or "").startswith("continuous training of")]):
        assert time.monotonic() < deadline, deployment.retrieve_information()["continuous"]
        time.sleep(0.25)
    [loop_dataset] = deployment.list_feedback_loop_datasets()
    assert loop_dataset["exported_reviews"] == 2 and loop_dataset["last_version_id"] not in (None, saved["id"])
    read = tasks[0]["input_data"]["datasets"]["train"]
    assert read == {"dataset_id": train["id"], "version_id": loop_dataset["last_version_id"]}
    names = {f["name"] for f in world["lineage"].files(train["id"], read["version_id"])}
    assert len(names - {"a.png", "b.png", "c.png"}) == 2  # the dataset's three files and the two reviews


def test_a_dataset_created_again_under_a_saved_name_is_not_found_in_the_older_version(stack, owner, world):
    # the manifest names datasets, not ids: "again" saved in `kept`, deleted, created anew; `kept` holds the old
    # dataset's file, which the new one never had
    lineage, project = world["lineage"], world["project"]
    old = lineage.create_dataset(project["id"], "again", kind="images")
    png, _ = digit_png(4)
    lineage.upload_file(old["id"], png, name="old.png")
    kept = lineage.create_version(project["id"], "with the first 'again'")
    lineage.delete_dataset(old["id"])
    new = lineage.create_dataset(project["id"], "again", kind="images")
    for route, body in (("datasets/list_files", {}), ("datasets/get_file_info", {"name": "old.png"})):
        refused = post(stack, route, owner.token, {"dataset_id": new["id"], "version_id": kept["id"]} | body)
        assert refused.status_code == 404 and "before the dataset had been created" in refused.json()["msg"], \
            refused.text
    refused = post(stack, "deployments/attach_dataset_version_to_feedback_loop", owner.token, {
        "deployment": world["deployment"].name, "dataset_version": {"dataset_id": new["id"], "version_id": kept["id"]}})
    assert refused.status_code == 404 and "before the dataset had been created" in refused.json()["msg"], refused.text
    later = lineage.create_version(project["id"], "with the second 'again'")
    assert lineage.files(new["id"], later["id"]) == []  # a version saved since holds the new one (empty)


def test_a_file_list_past_the_bus_limit_is_paged_and_set_training_data_reads_it_in_pages(stack, owner, world):
    # nine files with ~1 MB labels each (a mask's polygons): their list, ~9 MB, passes the bus's 8 MiB. Before, the
    # lineage service's reply was only logged, list_files and set_training_data answered 504 after the 5-s timeout
    lineage, deployment = world["lineage"], world["deployment"]
    project = lineage.create_project("large labels")
    large = lineage.create_dataset(project["id"], "masks", kind="images")
    for index in range(9):
        png, digit = digit_png(index)
        lineage.upload_file(large["id"], png, name=f"{index}.png",
                            labels={"label": str(digit), "polygon": "7" * 1_000_000})
    version = lineage.create_version(project["id"], "large labels")

    for body in ({"dataset_id": large["id"]}, {"dataset_id": large["id"], "version_id": version["id"]}):
        started = time.monotonic()
        whole = post(stack, "datasets/list_files", owner.token, body)  # no limit: every file in one answer
        assert whole.status_code == 422 and whole.json()["code"] == "reply_too_large", whole.text
        assert "MiB a reply may carry on the bus: ask for pages: pass limit" in whole.json()["msg"], whole.text
        assert time.monotonic() - started < 3  # at once, not after the bus timeout
        first = post(stack, "datasets/list_files", owner.token, body | {"limit": 1000}).json()
        assert [f["name"] for f in first["files"]] == ["0.png", "1.png", "2.png", "3.png"]  # at most 4 MiB a page
        second = post(stack, "datasets/list_files", owner.token, body | {"limit": 2, "cursor": first["next_cursor"]})
        assert [f["name"] for f in second.json()["files"]] == ["4.png", "5.png"], second.text
        pages = list(lineage.file_pages(large["id"], body.get("version_id")))
        assert [[f["name"] for f in page] for page in pages] == [[f"{i}.png" for i in range(start, min(start + 4, 9))]
                                                                 for start in (0, 4, 8)]
        assert pages[2][0]["labels"] == {"label": str(digit_png(8)[1]), "polygon": "7" * 1_000_000}
    # "AA" decodes to a NUL, which PostgreSQL refuses in a text: it answered 500
    for cursor in ("%", "AA"):
        refused = post(stack, "datasets/list_files", owner.token,
                       {"dataset_id": large["id"], "limit": 2, "cursor": cursor})
        assert refused.status_code == 400 and "cursor: not a next_cursor" in refused.json()["msg"], refused.text
    # names of 200 characters, 199 of 4 UTF-8 bytes (a 1,063-character cursor): a page ending on one gave a next_cursor
    # longer than the 400 the next call took, and paging stopped there (400)
    longest = lineage.create_dataset(project["id"], "longest names", kind="files")
    names = [chr(0x1F600) * 199 + last for last in "abc"]
    for name in names:
        lineage.upload_file(longest["id"], b"x", name=name)
    saved_longest = lineage.create_version(project["id"], "longest names")
    for version_id in (None, saved_longest["id"]):
        assert list(lineage.file_pages(longest["id"], version_id, page_size=1)) == [
            [file] for file in lineage.files(longest["id"], version_id)]
        assert [f["name"] for f in lineage.files(longest["id"], version_id, page_size=2)] == names

    started = deployment.set_training_data({"dataset_id": large["id"], "version_id": version["id"]})
    assert (started["status"], started["images_total"]) == ("computing", 9), started
    ready = deployment.wait_for_training_data(60)
    assert (ready["status"], ready["images_done"]) == ("ready", 9), ready
