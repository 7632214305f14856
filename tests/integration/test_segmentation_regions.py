"""A segmentation keeps every region of a mask, on the real stack: the test segmenter (the bright-square detector
with per-cell masks, tests/image_models.py) deployed, an image whose one cell holds two separate bright squares
predicted through the SDK; each square comes back as its own entry with the cell's class and score, its outline
and its own bounding box (only the largest came back before), and the prediction is kept as answered."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import numpy as np
import pytest
from railyard_client import Client

from tests.image_models import segmenter_image_config, segmenter_onnx, squares_png
from tests.integration.conftest import PASSWORD, make_account, undeploy_all

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def owner(stack, admin):
    account = make_account(stack, admin, "segm")
    yield account
    undeploy_all(stack, account)


def test_every_region_of_a_mask_is_kept_with_its_class_and_score(stack, owner):
    secrets = stack.secrets()
    client = Client(stack.base_url, username=owner.email, password=PASSWORD, client_id=secrets["client_id"],
                    client_secret=secrets["client_secret"], workspace=owner.workspace_id)
    model = client.upload_model("segmenter", segmenter_onnx(), progress=False)
    pipeline = client.build_pipeline("segmenter").add_model_step(model, image=segmenter_image_config())
    pipeline.deploy(replicas=1, cpus=0.5, wait=False)
    pixels = np.zeros((32, 32), dtype=np.uint8)
    pixels[0:3, 0:3] = 255  # cell (0, 0): two bright squares apart, 9 and 4 pixels
    pixels[5:7, 5:7] = 255
    pixels[16:24, 16:24] = 255  # cell (2, 2): one white square filling it
    png = squares_png({}, pixels=pixels)
    pipeline.deployment().wait_until_running(180)
    deployment = client.get_deployment("segmenter")
    deployment.update(min_threshold=0.1)  # the 14 dark cells score 0
    answer = deployment.predict_bytes("two-squares.png", png)
    prediction = answer["prediction"]
    assert answer["kind"] == "segmentation" and answer["labels"] == ["white", "grey", "grey"]
    assert prediction["detection_classes"] == [1, 0, 0]
    scores = prediction["detection_scores"]
    assert scores[0] == pytest.approx(1.0) and scores[1] == scores[2] == pytest.approx(13 / 64)
    assert prediction["detection_masks"] == [[16, 16, 24, 16, 24, 24, 16, 24],  # one region: the cell's box stays
                                             [0, 0, 3, 0, 3, 3, 0, 3], [5, 5, 7, 5, 7, 7, 5, 7]]  # largest first
    assert prediction["detection_boxes"] == [[16, 16, 24, 24], [0, 0, 3, 3], [5, 5, 7, 7]]

    async def stored():
        conn = await asyncpg.connect(stack.settings().postgres.dsn)
        try:
            return await conn.fetchval("SELECT prediction FROM monitoring.predictions WHERE id = $1::uuid",
                                       answer["id"])
        finally:
            await conn.close()

    assert json.loads(asyncio.run(stored()))["detection_masks"] == prediction["detection_masks"]
