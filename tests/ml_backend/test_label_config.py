"""The labeling config parser and version steps (in memory)."""

from __future__ import annotations

import pytest
from railyard_ml.errors import InvalidLabelConfig
from railyard_ml.label_config import LabelInterface, parse_config
from railyard_ml.model import next_version

CONFIGS = {
    "text classification": """<View>
      <Text name="text" value="$text"/>
      <Choices name="sentiment" toName="text" choice="single">
        <Choice value="Positive"/><Choice value="Negative" alias="neg"/>
      </Choices></View>""",
    "ner with nested views and a filter": """<View>
      <Labels name="label" toName="text"><View><Label value="PER" predicted_values="person"/></View>
        <Label value="ORG"/></Labels>
      <Filter name="filter" toName="label"/>
      <Text name="text" value="$doc" valueType="text"/></View>""",
    "image boxes over two objects": """<View>
      <Image name="img" value="$image"/><Image name="img2" value="$image2"/>
      <RectangleLabels name="box" toName="img,img2,missing"><Label value="Car"/></RectangleLabels>
      <TextArea name="note" toName="img" perRegion="true" whenLabelValue="Car"/></View>""",
    "repeater and dynamic labels": """<View>
      <Repeater on="$pages" indexFlag="{{idx}}">
        <Image name="page_{{idx}}" value="$pages[{{idx}}].url"/>
        <Choices name="c_{{idx}}" toName="page_{{idx}}" value="$options"/>
      </Repeater></View>""",
    "paragraphs with valueList": """<View><Paragraphs name="dialogue" valueList="$utterances"/>
      <Choices name="intent" toName="dialogue"><Choice value="ask"/></Choices></View>""",
}

EXPECTED_TEXT = {
    "sentiment": {
        "type": "Choices", "to_name": ["text"],
        "inputs": [{"type": "Text", "valueType": None, "value": "text"}],
        "labels": ["Positive", "neg"],
        "labels_attrs": {"Positive": {"value": "Positive"}, "neg": {"value": "Negative", "alias": "neg"}},
    }
}


def test_parse_config_matches_label_studio_shape():
    assert parse_config(CONFIGS["text classification"]) == EXPECTED_TEXT
    ner = parse_config(CONFIGS["ner with nested views and a filter"])
    assert list(ner) == ["label"] and ner["label"]["labels"] == ["PER", "ORG"]
    assert ner["label"]["inputs"] == [{"type": "Text", "valueType": "text", "value": "doc"}]
    boxes = parse_config(CONFIGS["image boxes over two objects"])
    assert boxes["box"]["to_name"] == ["img", "img2", "missing"] and len(boxes["box"]["inputs"]) == 2
    assert boxes["note"]["conditionals"] == {"type": "label", "name": "Car"}
    repeated = parse_config(CONFIGS["repeater and dynamic labels"])
    assert repeated["c_{{idx}}"]["regex"] == {"{{idx}}": ".*"} and repeated["c_{{idx}}"]["dynamic_labels"] is True
    assert parse_config(CONFIGS["paragraphs with valueList"])["intent"]["inputs"] == [
        {"type": "Paragraphs", "valueType": None, "valueList": "utterances"}]
    assert parse_config("") == {} and parse_config(None) == {}


@pytest.mark.parametrize("config", ["<View", "<View><Text></View>", "not xml at all",
                                    '<!DOCTYPE v [<!ENTITY x "y">]><View>&x;</View>'])
def test_bad_configs_are_refused_with_a_reason(config):
    with pytest.raises(InvalidLabelConfig) as raised:
        parse_config(config)
    assert raised.value.status == 400 and raised.value.msg


def test_label_interface():
    interface = LabelInterface(CONFIGS["image boxes over two objects"])
    assert interface.get_first_tag_occurence("RectangleLabels", "Image") == ("box", "img", "image")
    assert interface.get_first_tag_occurence("RectangleLabels", "Image", to_name_filter=lambda n: n == "img2") == (
        "box", "img2", "image2")
    assert interface.get_control("box").labels == ["Car"]
    with pytest.raises(ValueError, match="Choices"):
        interface.get_first_tag_occurence("Choices", "Text")


@pytest.mark.parametrize(("before", "after"), [
    (None, "0.0.1"), ("0.0.1", "0.1.0"), ("1.4.9", "1.5.0"), ("model-v0.0.1", "model-v0.1.0"), ("v3", "v4"),
    ("INITIAL", "INITIAL-1")])
def test_next_version(before, after):
    assert next_version(before) == after
