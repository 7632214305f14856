"""Images of seed 003's predictions: decoding (PNG and JPEG only) and the image statistics that monitoring keeps
for every prediction (`image_features`), which the training-data reference computes on dataset images with the same
function and the outlying score compares.

Nothing here touches the network or the database: these are pure functions, unit-tested in memory."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from shared.errors import InvalidRequest

SUPPORTED_CONTENT_TYPES = ("image/png", "image/jpeg")
"""The content types predict and monitor accept (the seed's SupportedContentType)."""

MAX_PIXELS = 40_000_000
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
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        reason = "not a readable image" if isinstance(exc, UnidentifiedImageError) else str(exc)[:120]
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
    rgb = np.asarray(img.convert("RGB"), dtype=np.float64)
    luma = np.asarray(img.convert("L"), dtype=np.float64)
    features = {"height": float(img.height), "width": float(img.width),
                "brightness_mean": float(luma.mean()), "brightness_std": float(luma.std())}
    for index, channel in enumerate(("red", "green", "blue")):
        plane = rgb[:, :, index]
        features[f"{channel}_mean"] = float(plane.mean())
        features[f"{channel}_std"] = float(plane.std())
    return {name: round(features[name], 6) for name in FEATURE_NAMES}
