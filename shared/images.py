"""Images of seed 003's predictions: decoding (PNG and JPEG only), the image statistics that monitoring keeps for
every prediction (`image_features`, which the training-data reference computes on dataset images with the same
function and the outlying score compares), preprocessing by a pipeline's image configuration, the model's outputs
as the seed's PredictionFormat, and the checks of PredictionFormats that callers send (monitor).

Nothing here touches the network or the database: these are pure functions, unit-tested in memory."""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

from shared.errors import InvalidRequest
from shared.lean_imports import lazy_module
from shared.messages.monitoring_predictions import MAX_DETECTIONS, ImageConfig, PredictionFormat

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image, ImageStat
else:  # imported by the first image a process reads (~12 MiB of RSS an idle monitoring service does without)
    np = lazy_module("numpy")
    Image = lazy_module("PIL.Image")
    ImageStat = lazy_module("PIL.ImageStat")

SUPPORTED_CONTENT_TYPES = ("image/png", "image/jpeg")
"""The content types predict and monitor accept (the seed's SupportedContentType)."""

MAX_PIXELS = 16_000_000
"""Larger images are refused before decoding (a small compressed file can claim a huge canvas)."""

_FORMAT_OF = {"image/png": "PNG", "image/jpeg": "JPEG"}
_CONTENT_TYPE_OF = {fmt: content_type for content_type, fmt in _FORMAT_OF.items()}
_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png"}

FEATURE_NAMES = ("height", "width", "brightness_mean", "brightness_std", "red_mean", "red_std", "green_mean",
                 "green_std", "blue_mean", "blue_std")
"""The names `image_features` returns, always all of them, in this order."""


def normalize_content_type(content_type: str | None) -> str | None:
    """`image/png` or `image/jpeg` (parameters and case ignored, `image/jpg` accepted), None when not given;
    InvalidRequest for anything else."""
    if content_type is None or not content_type.strip():
        return None
    base = content_type.split(";", 1)[0].strip().lower()
    base = _ALIASES.get(base, base)
    if base not in _FORMAT_OF:
        raise InvalidRequest(f"unsupported content type {content_type!r}: send image/png or image/jpeg")
    return base


def sniff_content_type(data: bytes) -> str | None:
    """The content type the bytes' signature shows (PNG or JPEG), None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    return None


def decode_image(data: bytes, content_type: str | None = None) -> Image.Image:
    """The fully decoded image. `content_type` (image/png or image/jpeg) must match the bytes when given; without
    it the bytes' signature decides. Anything that is not a PNG or JPEG that decodes completely raises
    InvalidRequest with the reason (nothing is kept on failure)."""
    declared = normalize_content_type(content_type)
    if not data:
        raise InvalidRequest("the image is empty: send the bytes of a PNG or JPEG image")
    actual = sniff_content_type(data)
    if actual is None:
        raise InvalidRequest("the image is neither a PNG nor a JPEG (its first bytes are no PNG or JPEG signature)"
                             ": send image/png or image/jpeg")
    if declared is not None and declared != actual:
        raise InvalidRequest(f"content_type says {declared} but the bytes are a {_FORMAT_OF[actual]} image: "
                             f"send content_type {actual} or leave it out")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[_FORMAT_OF[actual]])
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise InvalidRequest(f"the image is {width}x{height} pixels: at most {MAX_PIXELS} pixels are "
                                     "accepted")
            img.load()
    except InvalidRequest:
        raise
    except (Image.UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        reason = "not a readable image" if isinstance(exc, Image.UnidentifiedImageError) else str(exc)[:120]
        raise InvalidRequest(f"the {_FORMAT_OF[actual]} image does not decode ({reason}): send a complete, valid "
                             "image") from None
    if img.width < 1 or img.height < 1:
        raise InvalidRequest("the image has no pixels")
    return img


def content_type_of(img: Image.Image) -> str:
    """image/png or image/jpeg for an image that decode_image returned."""
    return _CONTENT_TYPE_OF[img.format or "PNG"]


def image_features(img: Image.Image) -> dict[str, float]:
    """A fixed set of named image statistics (FEATURE_NAMES): height and width in pixels, and the mean and standard
    deviation of brightness (ITU-R 601 luma, PIL's "L") and of each RGB channel, on a 0-255 scale. A grayscale image
    has equal channels. The training reference computes the same on dataset images."""
    # from histograms (PIL's ImageStat): no float copy of a large image is made
    rgb = ImageStat.Stat(img.convert("RGB"))
    luma = ImageStat.Stat(img.convert("L"))
    features = {"height": float(img.height), "width": float(img.width),
                "brightness_mean": luma.mean[0], "brightness_std": luma.stddev[0]}
    for index, channel in enumerate(("red", "green", "blue")):
        features[f"{channel}_mean"] = rgb.mean[index]
        features[f"{channel}_std"] = rgb.stddev[index]
    return {name: round(float(features[name]), 6) for name in FEATURE_NAMES}


# --- preprocessing: an image into the model's input, as the pipeline's image configuration says ------------------


def _per_channel(values: list[float] | None, channels: int, what: str, default: float) -> np.ndarray:
    if values is None:
        return np.full(channels, default, dtype=np.float32)
    if len(values) not in (1, channels):
        raise InvalidRequest(f"the image configuration's {what} has {len(values)} values: give 1 or {channels}")
    if what == "std" and any(v == 0 for v in values):
        raise InvalidRequest("the image configuration's std has a zero")
    return np.asarray(values * (channels // len(values)), dtype=np.float32)


def preprocess(img: Image.Image, config: ImageConfig) -> np.ndarray:
    """The model input for one image: a float32 array with a batch dimension of one ([1, C, H, W], [1, H, W, C],
    or [1, C*H*W] / [1, H*W*C] when flattened)."""
    converted = img.convert("L" if config.channels == 1 else "RGB")
    if config.size is not None:
        width, height = config.size
        if width < 1 or height < 1:
            raise InvalidRequest("the image configuration's size must be positive [width, height]")
        if converted.size != (width, height):
            converted = converted.resize((width, height), Image.BILINEAR)
    pixels = np.asarray(converted, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    values = pixels * np.float32(config.scale)
    values = (values - _per_channel(config.mean, config.channels, "mean", 0.0)) / \
        _per_channel(config.std, config.channels, "std", 1.0)
    if config.layout == "NCHW":
        values = values.transpose(2, 0, 1)
    batch = values[None, ...].astype(np.float32)
    return batch.reshape(1, -1) if config.flatten else batch


# --- outputs: the model's outputs into the seed's PredictionFormat --------------------------------------------------


def _output(outputs: dict[str, np.ndarray], name: str | None, what: str) -> np.ndarray:
    if name is None or name not in outputs:
        raise InvalidRequest(f"the model has no output {name!r} for {what} (its outputs: {sorted(outputs)}): fix "
                             "the pipeline's image configuration")
    return np.asarray(outputs[name])


def to_prediction(outputs: dict[str, np.ndarray], config: ImageConfig, height: int, width: int,
                  min_threshold: float | None) -> dict[str, list]:
    """One image's model outputs (each without its batch dimension) as a PredictionFormat dict.

    Classification: the `top_k` best classes of the `scores` output (one score per label), best first, those scoring
    below `min_threshold` dropped (when even the best does, the prediction names no class: empty lists).
    Detection: every box of `boxes` with its score and class, best score first, those scoring below `min_threshold`
    dropped, at most MAX_DETECTIONS (the best scoring); boxes become integer pixels of the original image (height x
    width), [top, left, bottom, right], clipped to it."""
    scores = _output(outputs, config.outputs.scores, "scores").astype(np.float64).reshape(-1)
    if not np.isfinite(scores).all():
        raise InvalidRequest("the model answered scores that are not finite numbers")
    if config.kind == "classification":
        if scores.size != len(config.labels):
            raise InvalidRequest(f"the model answered {scores.size} scores for {len(config.labels)} labels: the "
                                 "image configuration's labels must list one label per score")
        best = [i for i in np.argsort(-scores, kind="stable")[:config.top_k]
                if min_threshold is None or scores[i] >= min_threshold]
        return {"detection_classes": [int(i) for i in best],
                "detection_scores": [float(np.clip(scores[i], 0.0, 1.0)) for i in best]}
    boxes = _output(outputs, config.outputs.boxes, "boxes").astype(np.float64)
    if boxes.size != scores.size * 4:
        raise InvalidRequest(f"the model answered {scores.size} scores but {boxes.size // 4} boxes")
    boxes = boxes.reshape(-1, 4)
    if config.outputs.classes is not None:
        classes = _output(outputs, config.outputs.classes, "classes").reshape(-1)
        if classes.size != scores.size:
            raise InvalidRequest(f"the model answered {scores.size} scores but {classes.size} classes")
        classes = np.rint(classes.astype(np.float64)).astype(np.int64)
    else:
        classes = np.zeros(scores.size, dtype=np.int64)
    if config.box_format == "ltrb":
        boxes = boxes[:, [1, 0, 3, 2]]
    if config.box_normalized:
        boxes = boxes * np.array([height, width, height, width], dtype=np.float64)
    elif config.size is not None:
        in_width, in_height = config.size
        boxes = boxes * np.array([height / in_height, width / in_width] * 2, dtype=np.float64)
    limits = np.array([height, width, height, width], dtype=np.float64)
    pixels = np.clip(np.rint(boxes), 0, limits).astype(np.int64)
    keep = [i for i in np.argsort(-scores, kind="stable")
            if (min_threshold is None or scores[i] >= min_threshold) and 0 <= classes[i] < len(config.labels)]
    keep = keep[:MAX_DETECTIONS]  # the best ones: a PredictionFormat holds no more
    prediction = {"detection_classes": [int(classes[i]) for i in keep],
                  "detection_scores": [float(np.clip(scores[i], 0.0, 1.0)) for i in keep],
                  "detection_boxes": [[int(v) for v in pixels[i]] for i in keep]}
    if config.kind == "segmentation":
        masks = _output(outputs, config.outputs.masks, "masks")
        if masks.ndim != 3 or masks.shape[0] != scores.size:
            raise InvalidRequest(f"the model answered masks of shape {list(masks.shape)} for {scores.size} "
                                 "detections: segmentation masks are [K, height, width]")
        return _regions(prediction, [masks[i] > config.mask_threshold for i in keep], height, width)
    return prediction


def _regions(prediction: dict[str, list], masks: list[np.ndarray], height: int, width: int) -> dict[str, list]:
    """A segmentation with one entry per region: each detection's mask becomes one entry per 4-connected region
    (largest first), each with the detection's class and score and its outline as polygon. A mask of one region
    keeps the detection's box; a mask of several gives each region its own bounding box (the detection's box
    spans them all, so it would describe none of them); an empty mask keeps the box, as a rectangle polygon too.
    At most MAX_DETECTIONS entries (beyond, the smallest regions of the last detections are left out)."""
    found: dict[str, list] = {"detection_classes": [], "detection_scores": [], "detection_boxes": [],
                              "detection_masks": []}
    for index, mask in enumerate(masks):
        room = MAX_DETECTIONS - len(found["detection_classes"])
        if room <= 0:
            break
        box = prediction["detection_boxes"][index]
        polygons, count = _traced(mask, height, width, room)
        polygons = polygons or [_box_polygon(np.asarray(box))]
        for polygon in polygons:
            xs, ys = polygon[0::2], polygon[1::2]
            found["detection_classes"].append(prediction["detection_classes"][index])
            found["detection_scores"].append(prediction["detection_scores"][index])
            found["detection_boxes"].append([min(ys), min(xs), max(ys), max(xs)] if count > 1 else box)
            found["detection_masks"].append(polygon)
    return found


def _box_polygon(box: np.ndarray) -> list[int]:
    top, left, bottom, right = (int(v) for v in box)
    return [left, top, right, top, right, bottom, left, bottom]


def mask_polygon(mask: np.ndarray, height: int, width: int) -> list[int]:
    """The outline of a binary mask's largest 4-connected region (see `mask_polygons`); [] for an empty mask."""
    polygons = mask_polygons(mask, height, width, limit=1)
    return polygons[0] if polygons else []


def mask_polygons(mask: np.ndarray, height: int, width: int, limit: int | None = None) -> list[list[int]]:
    """The outline of each 4-connected region of a binary mask, largest first (at most `limit`), each a polygon
    `[x1, y1, x2, y2, ...]` along pixel edges (clockwise, corners only), scaled from the mask's size to
    height x width and rounded; [] for an empty mask. Holes are not represented (a polygon is one outline)."""
    return _traced(mask, height, width, limit)[0]


def _traced(mask: np.ndarray, height: int, width: int, limit: int | None) -> tuple[list[list[int]], int]:
    """(`mask_polygons`, how many regions the mask has)."""
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count == 0:
        return [], 0
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=range(1, count + 1))
    order = np.argsort(-sizes, kind="stable")[:limit]
    boxes = ndimage.find_objects(labels)  # each region traced in its own bounding box, not the whole mask
    scale = (width / mask.shape[1], height / mask.shape[0])
    return [_outline(labels[boxes[index]] == (int(index) + 1), (boxes[index][1].start, boxes[index][0].start),
                     scale, height, width) for index in order], count


def _outline(region: np.ndarray, offset: tuple[int, int], scale: tuple[float, float], height: int,
             width: int) -> list[int]:
    """The outline of one 4-connected region, given cropped to its bounding box at `offset` (x, y) of the mask
    (see `mask_polygons`)."""
    padded = np.pad(region, 1)
    rows, cols = np.nonzero(region)
    # directed edges along the region's border, the region on their right (y grows downwards)
    outgoing: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        pr, pc = r + 1, c + 1
        sides = ((not padded[pr - 1, pc], (c, r), (c + 1, r)), (not padded[pr, pc + 1], (c + 1, r), (c + 1, r + 1)),
                 (not padded[pr + 1, pc], (c + 1, r + 1), (c, r + 1)), (not padded[pr, pc - 1], (c, r + 1), (c, r)))
        for border, start, end in sides:
            if border:
                outgoing.setdefault(start, []).append(end)
    start = (int(cols[rows == rows.min()].min()), int(rows.min()))  # the top-left corner: on the outer outline
    points = [start]
    previous, current = start, outgoing[start][0]
    while current != start:
        choices = outgoing[current]
        if len(choices) > 1:  # a pinch: turn right (keeps to this pixel, so diagonal neighbours stay apart)
            dx, dy = current[0] - previous[0], current[1] - previous[1]
            right = (current[0] - dy, current[1] + dx)
            following = right if right in choices else choices[0]
        else:
            following = choices[0]
        choices.remove(following)
        points.append(current)
        previous, current = current, following
    corners = [p for i, p in enumerate(points)
               if (p[0] - points[i - 1][0]) * (points[(i + 1) % len(points)][1] - p[1]) !=
               (p[1] - points[i - 1][1]) * (points[(i + 1) % len(points)][0] - p[0])]
    polygon: list[int] = []
    for x, y in corners:
        polygon += [int(np.clip(round((x + offset[0]) * scale[0]), 0, width)),
                    int(np.clip(round((y + offset[1]) * scale[1]), 0, height))]
    return polygon


# --- checks of PredictionFormats sent by callers (monitor) ----------------------------------------------------------


def prediction_kind(prediction: PredictionFormat) -> str:
    """classification, detection (boxes) or segmentation (boxes and masks)."""
    if prediction.detection_masks is not None:
        return "segmentation"
    if prediction.detection_boxes is not None:
        return "detection"
    return "classification"


def check_prediction(prediction: PredictionFormat, height: int, width: int, what: str = "prediction",
                     labels: list[str] | None = None) -> str:
    """Its kind, once every rule of the seed's PredictionFormat holds; InvalidRequest naming the first broken one:
    lists of equal length, scores in 0..1, class ids >= 0 (and < the number of labels when known), boxes of 4
    integers [top, left, bottom, right] inside the height x width image with top <= bottom and left <= right,
    masks (segmentation, which needs boxes too) polygons of at least 3 points inside the image."""
    count = len(prediction.detection_classes)
    if len(prediction.detection_scores) != count:
        raise InvalidRequest(f"{what}: detection_scores has {len(prediction.detection_scores)} values but "
                             f"detection_classes {count}: give one score per class")
    for index, score in enumerate(prediction.detection_scores):
        if not (0.0 <= score <= 1.0):  # NaN fails too
            raise InvalidRequest(f"{what}: detection_scores[{index}] is {score}: scores are between 0 and 1")
    for index, cls in enumerate(prediction.detection_classes):
        if cls < 0 or (labels is not None and cls >= len(labels)):
            bound = f" and below {len(labels)} (the deployment's labels)" if labels is not None else ""
            raise InvalidRequest(f"{what}: detection_classes[{index}] is {cls}: class ids are 0 or more{bound}")
    if prediction.detection_masks is not None and prediction.detection_boxes is None:
        raise InvalidRequest(f"{what}: detection_masks without detection_boxes: a segmentation gives both")
    if prediction.detection_boxes is not None:
        if len(prediction.detection_boxes) != count:
            raise InvalidRequest(f"{what}: detection_boxes has {len(prediction.detection_boxes)} boxes but "
                                 f"detection_classes {count}: give one box per class")
        for index, box in enumerate(prediction.detection_boxes):
            if len(box) != 4:
                raise InvalidRequest(f"{what}: detection_boxes[{index}] has {len(box)} values: a box is [top, left, "
                                     "bottom, right]")
            top, left, bottom, right = box
            if not (0 <= top <= bottom <= height and 0 <= left <= right <= width):
                raise InvalidRequest(f"{what}: detection_boxes[{index}] {box} is not [top, left, bottom, right] "
                                     f"inside the {width}x{height} image (0 <= top <= bottom <= height, "
                                     "0 <= left <= right <= width)")
    if prediction.detection_masks is not None:
        if len(prediction.detection_masks) != count:
            raise InvalidRequest(f"{what}: detection_masks has {len(prediction.detection_masks)} polygons but "
                                 f"detection_classes {count}: give one polygon per class")
        for index, polygon in enumerate(prediction.detection_masks):
            if len(polygon) < 6 or len(polygon) % 2:
                raise InvalidRequest(f"{what}: detection_masks[{index}] has {len(polygon)} values: a polygon is "
                                     "[x1, y1, x2, y2, x3, y3, ...], at least 3 points")
            xs, ys = polygon[0::2], polygon[1::2]
            if min(xs) < 0 or max(xs) > width or min(ys) < 0 or max(ys) > height:
                raise InvalidRequest(f"{what}: detection_masks[{index}] has points outside the {width}x{height} "
                                     "image")
    return prediction_kind(prediction)
