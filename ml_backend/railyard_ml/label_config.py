"""Label Studio labeling configs, parsed with the standard library.

`parse_config` returns what Label Studio ML backends know as `parsed_label_config`: one entry per control tag
(a tag with `name` and `toName`, e.g. `<Choices>`), keyed by its name:

    {"sentiment": {"type": "Choices", "to_name": ["text"],
                   "inputs": [{"type": "Text", "valueType": None, "value": "text"}],
                   "labels": ["Positive", "Negative"], "labels_attrs": {"Positive": {...}, ...}}}

`LabelInterface` is the small part of label-studio-sdk's interface that backends use
(`get_first_tag_occurence`, `get_control(name).labels`).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field

from railyard_ml.errors import InvalidLabelConfig

_LABEL_TAGS = {"Label", "Choice", "Relation"}
_NOT_CONTROL_TAGS = {"Filter"}
_VARIABLE = re.compile(r"^\$[A-Za-z_]+$")


class LabelConfigMismatch(ValueError):
    """The labeling config lacks what the model asked of it (`get_first_tag_occurence`'s control over an object,
    `get_control`'s name). A ValueError, as label-studio-sdk raises: backends that catch it keep doing so."""


class MissingControl(LabelConfigMismatch, KeyError):
    """`get_control` of a name the config does not have (a KeyError, as before)."""

    def __str__(self) -> str:  # KeyError's repr of its argument would quote the sentence
        return str(self.args[0]) if self.args else ""


def _load(config: str) -> ET.Element:
    if "<!DOCTYPE" in config or "<!ENTITY" in config:
        # labeling configs never need them, and entities are how XML parsers get attacked
        raise InvalidLabelConfig("the labeling config may not contain a DOCTYPE or entities")
    try:
        return ET.fromstring(config)
    except ET.ParseError as exc:
        raise InvalidLabelConfig(f"the labeling config is not valid XML: {exc}") from None


def parse_config(config: str | None) -> dict[str, dict]:
    """Parse a labeling config into {control name: {type, to_name, inputs, labels, labels_attrs}}."""
    return _parse(config)[0]


def _parse(config: str | None) -> tuple[dict[str, dict], dict[str, dict]]:
    if not config:
        return {}, {}
    root = _load(config)
    parents = {child: parent for parent in root.iter() for child in parent}
    inputs: dict[str, dict] = {}
    outputs: dict[str, dict] = {}
    labels: dict[str, dict[str, dict]] = {}
    variables: list[str] = []
    for tag in root.iter():
        attrs = tag.attrib
        if "indexFlag" in attrs:
            variables.append(attrs["indexFlag"])
        if attrs.get("name") and attrs.get("toName") and tag.tag not in _NOT_CONTROL_TAGS:
            info: dict = {"type": tag.tag, "to_name": attrs["toName"].split(",")}
            for variable in variables:  # e.g. {{idx}} inside a <Repeater>
                if any(variable in name for name in info["to_name"]):
                    info.setdefault("regex", {})[variable] = ".*"
            if attrs.get("perRegion") == "true":
                for attr, kind in (("whenTagName", "tag"), ("whenLabelValue", "label"), ("whenChoiceValue", "choice")):
                    if attrs.get(attr):
                        info["conditionals"] = {"type": kind, "name": attrs[attr]}
                        break
            if _VARIABLE.fullmatch(attrs.get("value", "")) or attrs.get("apiUrl"):
                info["dynamic_labels"] = True
            outputs[attrs["name"]] = info
        elif attrs.get("name") and (attrs.get("value") or attrs.get("valueList")):
            entry: dict = {"type": tag.tag, "valueType": attrs.get("valueType")}
            if "value" in attrs:
                entry["value"] = attrs["value"].lstrip("$")
            else:
                entry["valueList"] = attrs["valueList"].lstrip("$")
            inputs[attrs["name"]] = entry
        if tag.tag in _LABEL_TAGS:
            parent = parents.get(tag)
            while parent is not None and parent.attrib.get("name") not in outputs:
                parent = parents.get(parent)
            value = attrs.get("alias") or attrs.get("value") or attrs.get("valueList")
            if parent is not None and value:
                labels.setdefault(parent.attrib["name"], {})[value] = dict(attrs)
    for name, info in outputs.items():
        info["inputs"] = [inputs[to] for to in info["to_name"] if to in inputs]
        info["labels"] = list(labels.get(name, {}))
        info["labels_attrs"] = labels.get(name, {})
    return outputs, inputs


@dataclass
class ControlTag:
    """A control tag of the config (`<Choices>`, `<Labels>`, ...) with its labels."""

    name: str
    tag: str
    to_name: list[str]
    inputs: list[dict]
    labels: list[str] = field(default_factory=list)
    labels_attrs: dict[str, dict] = field(default_factory=dict)


class LabelInterface:
    """The parts of label-studio-sdk's `LabelInterface` that ML backends use, over `parse_config`."""

    def __init__(self, config: str | None) -> None:
        self.config = config or ""
        self.parsed, self._objects = _parse(config)

    @property
    def controls(self) -> list[ControlTag]:
        return [self.get_control(name) for name in self.parsed]

    def get_control(self, name: str | None = None) -> ControlTag:
        """The control tag called `name` (the only one when `name` is None)."""
        if name is None:
            if len(self.parsed) != 1:
                raise MissingControl("the config has more than one control tag: name the one you want" if self.parsed
                                     else "the labeling config has no control tag")
            name = next(iter(self.parsed))
        if name not in self.parsed:
            raise MissingControl(f"no control tag named {name!r} in the labeling config")
        info = self.parsed[name]
        return ControlTag(name=name, tag=info["type"], to_name=info["to_name"], inputs=info["inputs"],
                          labels=info["labels"], labels_attrs=info["labels_attrs"])

    get_tag = get_control

    def get_first_tag_occurence(
        self,
        control_type: str | tuple,
        object_type: str | tuple,
        name_filter: Callable[[str], bool] | None = None,
        to_name_filter: Callable[[str], bool] | None = None,
    ) -> tuple[str, str, str]:
        """(from_name, to_name, value) of the first control of `control_type` over an object of `object_type`."""
        control_types = (control_type,) if isinstance(control_type, str) else tuple(control_type)
        object_types = (object_type,) if isinstance(object_type, str) else tuple(object_type)
        for from_name, info in self.parsed.items():
            if info["type"].lower() not in {t.lower() for t in control_types}:
                continue
            if name_filter and not name_filter(from_name):
                continue
            for to_name in info["to_name"]:
                entry = self._objects.get(to_name)
                if entry is None or (to_name_filter and not to_name_filter(to_name)):
                    continue
                if entry["type"].lower() in {t.lower() for t in object_types}:
                    return from_name, to_name, entry.get("value", entry.get("valueList"))
        raise LabelConfigMismatch(f"no <{'|'.join(control_types)}> over <{'|'.join(object_types)}> in the labeling "
                                  "config")
