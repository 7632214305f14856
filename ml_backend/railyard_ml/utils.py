"""Helpers label_studio_ml.utils offered that backends import (same names)."""

from __future__ import annotations

import os

DATA_UNDEFINED_NAME = "$undefined$"


def get_env(name: str, default: str | None = None, is_bool: bool = False):  # noqa: ANN201
    """`name` from the environment, also looked up with the LABEL_STUDIO_ prefix."""
    for key in (name, f"LABEL_STUDIO_{name}"):
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
