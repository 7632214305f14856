"""Small real image models for seed 003's predictions, made here (nothing is downloaded), with the pipeline image
configuration that serves them (docs/monitoring.md, "Image configuration"):

- a digits classifier: scikit-learn's bundled 8x8 digits (0-16 gray levels, light digit on black), a logistic
  regression exported with skl2onnx: input `pixels` float[N, 64] -> `label` int64[N], `probabilities` float[N, 10];
- a bright-square detector: an ONNX graph (onnx.helper) that cuts a 32x32 grayscale image into a 4x4 grid of 8x8
  cells and reports every cell as a box (normalized [top, left, bottom, right]) scored by its mean brightness, class
  1 ("white") above 0.75 else 0 ("grey"): input `image` float[N, 1, 32, 32] -> `boxes` float[N, 16, 4], `scores`
  float[N, 16], `classes` int64[N, 16] (and, as `segmenter_onnx`, `masks` float[N, 16, 32, 32]: each cell's bright
  pixels). Deterministic, so a test knows its answer.

Images are PNG bytes; every builder is cached, so a test module pays for each once."""

from __future__ import annotations

import io
from functools import cache

import numpy as np

DIGIT_LABELS = [str(digit) for digit in range(10)]
DETECTOR_LABELS = ["grey", "white"]
GRID = 4  # the detector's cells per side
DETECTOR_SIZE = 32  # its input is DETECTOR_SIZE x DETECTOR_SIZE
HELD_OUT = 300  # the last digits are never trained on: test images come from them


def digits_image_config() -> dict:
    """The digits classifier's image configuration: grayscale, 8x8, gray levels back to 0-16, flat."""
    return {"input": "pixels", "kind": "classification", "labels": DIGIT_LABELS,
            "outputs": {"scores": "probabilities"}, "size": [8, 8], "channels": 1, "scale": 16 / 255,
            "layout": "NCHW", "flatten": True, "top_k": 1}


def detector_image_config() -> dict:
    """The detector's image configuration: grayscale 32x32 in 0..1, NCHW; boxes normalized [top, left, bottom,
    right]."""
    return {"input": "image", "kind": "detection", "labels": DETECTOR_LABELS,
            "outputs": {"scores": "scores", "boxes": "boxes", "classes": "classes"}, "size": [DETECTOR_SIZE] * 2,
            "channels": 1, "scale": 1 / 255, "layout": "NCHW", "box_format": "tlbr", "box_normalized": True}


@cache
def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data.astype(np.float32), digits.target.astype(np.int64)


@cache
def digits_classifier(train_size: int = 1200, seed: int = 0):
    """The fitted scikit-learn model (trained on `train_size` digits drawn from all but the held-out ones).

    Fitted on one BLAS thread: on the suite's busy 2-core machine OpenBLAS's other thread spins waiting for a core
    (1200 digits: 6.9 s, 4 s of it CPU, against 0.12 s at load 10). test_monitoring_loop's training runs upload fits
    made here, in the test process."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    x, y = _digits()
    pool = np.random.default_rng(seed).permutation(len(x) - HELD_OUT)[:train_size]
    with threadpool_limits(limits=1, user_api="blas"):
        return LogisticRegression(max_iter=2000).fit(x[pool], y[pool])


@cache
def digits_classifier_onnx(train_size: int = 1200, seed: int = 0) -> bytes:
    """The digits classifier as ONNX (a smaller `train_size` makes a worse model, for challengers)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    model = digits_classifier(train_size, seed)
    onx = convert_sklearn(model, initial_types=[("pixels", FloatTensorType([None, 64]))],
                          options={id(model): {"zipmap": False}}, target_opset=17)
    return onx.SerializeToString()


def digit_pixels(index: int) -> tuple[np.ndarray, int]:
    """A held-out digit (index 0..HELD_OUT-1) as 8x8 gray levels 0-16, and its true class."""
    x, y = _digits()
    row = len(x) - HELD_OUT + index
    return x[row].reshape(8, 8), int(y[row])


def digit_png(index: int, size: int = 8) -> tuple[bytes, int]:
    """A held-out digit as a grayscale PNG (levels scaled to 0-255, enlarged to `size` pixels by nearest
    neighbour), and its true class."""
    from PIL import Image

    pixels, label = digit_pixels(index)
    img = Image.fromarray(np.round(pixels * 255 / 16).astype(np.uint8), mode="L")
    if size != 8:
        img = img.resize((size, size), Image.NEAREST)
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue(), label


def segmenter_image_config() -> dict:
    """The detector's configuration read as a segmentation (with `segmenter_onnx`'s masks)."""
    config = detector_image_config()
    return config | {"kind": "segmentation", "outputs": config["outputs"] | {"masks": "masks"}}


@cache
def segmenter_onnx() -> bytes:
    """The detector with one more output, `masks` float[N, 16, 32, 32]: for each cell, its pixels brighter than 0.5
    (the rest of the image is 0), so a bright shape in a cell comes back as its outline."""
    return detector_onnx(masks=True)


@cache
def detector_onnx(masks: bool = False, white_above: float = 0.75) -> bytes:
    """The bright-square detector (see the module's docstring); `masks`: with per-cell masks (`segmenter_onnx`);
    `white_above`: the mean brightness above which a cell is "white" (a lower one, e.g. 0.3, makes a worse detector
    that calls grey squares white, for challengers)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cell = DETECTOR_SIZE // GRID
    boxes = np.array([[r / GRID, c / GRID, (r + 1) / GRID, (c + 1) / GRID] for r in range(GRID) for c in range(GRID)],
                     dtype=np.float32)
    initializers = [
        numpy_helper.from_array(np.array([-1, GRID * GRID], dtype=np.int64), "flat_shape"),
        numpy_helper.from_array(boxes, "cell_boxes"),
        numpy_helper.from_array(np.array(white_above, dtype=np.float32), "white_above"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "last_axis"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
    ]
    nodes = [
        helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[cell, cell], strides=[cell, cell]),
        helper.make_node("Reshape", ["pooled", "flat_shape"], ["scores"]),
        helper.make_node("Greater", ["scores", "white_above"], ["is_white"]),
        helper.make_node("Cast", ["is_white"], ["classes"], to=TensorProto.INT64),
        helper.make_node("Mul", ["scores", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "one"], ["ones"]),
        helper.make_node("Unsqueeze", ["ones", "last_axis"], ["ones_3d"]),
        helper.make_node("Mul", ["ones_3d", "cell_boxes"], ["boxes"]),
    ]
    outputs = [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [None, GRID * GRID, 4]),
               helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, GRID * GRID]),
               helper.make_tensor_value_info("classes", TensorProto.INT64, [None, GRID * GRID])]
    if masks:
        cells = np.zeros((GRID * GRID, DETECTOR_SIZE, DETECTOR_SIZE), dtype=np.float32)
        for index in range(GRID * GRID):
            row, col = divmod(index, GRID)
            cells[index, row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] = 1
        initializers += [numpy_helper.from_array(cells, "cell_masks"),
                         numpy_helper.from_array(np.array(0.5, dtype=np.float32), "bright_above")]
        nodes += [helper.make_node("Greater", ["image", "bright_above"], ["is_bright"]),
                  helper.make_node("Cast", ["is_bright"], ["bright"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", ["bright", "cell_masks"], ["masks"])]
        outputs.append(helper.make_tensor_value_info("masks", TensorProto.FLOAT,
                                                     [None, GRID * GRID, DETECTOR_SIZE, DETECTOR_SIZE]))
    graph = helper.make_graph(nodes, "bright_squares",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                             [None, 1, DETECTOR_SIZE, DETECTOR_SIZE])],
                              outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def squares_png(cells: dict[tuple[int, int], int], size: int = 64, mode: str = "RGB", fmt: str = "PNG",
                pixels: np.ndarray | None = None) -> bytes:
    """A black `size`x`size` image whose detector cells (row, col) in `cells` are filled with that gray level (or
    the given gray `pixels`)."""
    from PIL import Image

    if pixels is None:
        pixels = np.zeros((size, size), dtype=np.uint8)
        step = size // GRID
        for (row, col), level in cells.items():
            pixels[row * step:(row + 1) * step, col * step:(col + 1) * step] = level
    img = Image.fromarray(pixels, mode="L").convert(mode)
    buffer = io.BytesIO()
    img.save(buffer, fmt)
    return buffer.getvalue()
