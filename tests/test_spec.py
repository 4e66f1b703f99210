"""Spec validation: structure, names and params fail before any weight loads, with the field named."""

from __future__ import annotations

import json

import pytest
import yaml

from mmllm_sdk import build_model, load_spec
from mmllm_sdk.errors import DimensionError, SpecError, UnknownComponentError
from mmllm_sdk.spec import parse_spec
from mmllm_sdk.testing import tiny_llm_config


def test_a_typo_in_a_field_names_the_field_and_what_would_fit(image_spec):
    image_spec["inputs"]["image"]["projecter"] = image_spec["inputs"]["image"].pop("projector")
    with pytest.raises(SpecError) as caught:
        parse_spec(image_spec)
    message = str(caught.value)
    assert "inputs.image.projecter: is not a known field; the fields here are: encoder, projector" in message
    assert "inputs.image.projector: is required but missing" in message


def test_an_unknown_encoder_suggests_the_nearest_name(image_spec):
    image_spec["inputs"]["image"]["encoder"]["name"] = "hf-clip-visoin"
    with pytest.raises(
        UnknownComponentError,
        match=r"inputs.image.encoder.name: 'hf-clip-visoin' is not a registered encoder for modality 'image'. Did you mean 'hf-clip-vision'\?",
    ):
        parse_spec(image_spec)


def test_an_unknown_modality_lists_the_known_ones(image_spec):
    image_spec["inputs"]["smell"] = image_spec["inputs"].pop("image")
    with pytest.raises(
        UnknownComponentError,
        match=r"inputs.smell: 'smell' is not a registered modality\..*Registered: audio, (.+, )?image, (.+, )?video\.",
    ):
        parse_spec(image_spec)


def test_an_encoder_registered_for_another_modality_is_refused(image_spec):
    image_spec["inputs"]["image"]["encoder"] = {"name": "hf-whisper-encoder", "params": {}}
    with pytest.raises(
        UnknownComponentError, match="'hf-whisper-encoder' is not a registered encoder for modality 'image'"
    ):
        parse_spec(image_spec)


def test_an_unknown_param_names_its_full_path(image_spec):
    image_spec["inputs"]["image"]["projector"]["params"] = {"num_layer": 3}
    with pytest.raises(
        SpecError,
        match=r"inputs.image.projector.params.num_layer: is not a known field; the fields here are: num_layers, hidden_dim",
    ):
        parse_spec(image_spec)


def test_a_param_of_the_wrong_type_shows_the_value(image_spec):
    image_spec["inputs"]["image"]["encoder"]["params"]["feature_layer"] = "last"
    with pytest.raises(SpecError, match=r"inputs.image.encoder.params.feature_layer: .*\(got 'last'\)"):
        parse_spec(image_spec)


def test_model_and_config_together_are_refused(image_spec, tokenizer_dir):
    image_spec["llm"]["params"]["model"] = tokenizer_dir
    with pytest.raises(SpecError, match="llm.params: .*set exactly one of 'model'"):
        parse_spec(image_spec)


def test_a_dimension_that_cannot_fit_fails_before_any_weight_is_read(image_spec, tokenizer_dir, tmp_path):
    # An LLM folder with a config and a tokenizer but no weights at all: reading weights would fail.
    from transformers import AutoConfig, AutoTokenizer

    config = dict(tiny_llm_config())
    AutoConfig.for_model(config.pop("model_type"), **config).save_pretrained(tmp_path / "llm")
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(tmp_path / "llm")
    image_spec["llm"]["params"] = {"model": str(tmp_path / "llm")}
    image_spec["inputs"]["image"]["projector"] = {"name": "qformer", "params": {"hidden_dim": 30, "num_heads": 8}}
    with pytest.raises(DimensionError, match="hidden_dim 30 is not divisible by num_heads 8"):
        build_model(image_spec, progress=False)


def test_a_spec_file_is_read_from_yaml(tmp_path, image_spec):
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(image_spec))
    spec = load_spec(path)
    assert spec.inputs["image"].projector.name == "mlp"
    assert spec.inputs["image"].encoder.trainable is False and spec.inputs["image"].projector.trainable is True


def test_a_broken_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("llm: {name: hf-causal-lm\ninputs: [")
    with pytest.raises(SpecError, match=r"broken.yaml' is not valid YAML"):
        load_spec(path)


def test_a_spec_file_error_names_the_file_and_the_field(tmp_path, image_spec):
    image_spec["seeed"] = 1
    path = tmp_path / "typo.yaml"
    path.write_text(json.dumps(image_spec))
    with pytest.raises(SpecError, match=r"typo.yaml is not valid:\n  seeed: is not a known field"):
        load_spec(path)


def test_a_missing_spec_file_says_so(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")


def test_a_random_llm_without_a_tokenizer_asks_for_one(image_spec):
    del image_spec["llm"]["params"]["tokenizer"]
    with pytest.raises(SpecError, match="still needs a real tokenizer"):
        build_model(image_spec, progress=False)


def test_the_skeleton_has_no_weights_but_the_right_sizes(image_spec):
    model = build_model(image_spec, skeleton=True, progress=False)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert model.encoders["image"].num_tokens == 16
    assert model.input_projectors["image"].num_tokens == 16
    counts = {row.component: row for row in model.parameter_counts()}
    assert counts["inputs.image.projector"].trainable == counts["inputs.image.projector"].total > 0
    assert counts["llm"].trainable == 0


def test_relative_paths_in_a_spec_file_are_read_from_its_folder(tmp_path, image_spec, tokenizer_dir, monkeypatch):
    import shutil

    shutil.copytree(tokenizer_dir, tmp_path / "specs" / "tokenizer")
    image_spec["llm"]["params"]["tokenizer"] = "./tokenizer"
    (tmp_path / "specs" / "model.yaml").write_text(yaml.safe_dump(image_spec))
    monkeypatch.chdir(tmp_path)  # not the spec's folder
    spec = load_spec("specs/model.yaml")
    assert spec.llm.params["tokenizer"] == str((tmp_path / "specs" / "tokenizer").resolve())
    assert build_model(spec, progress=False).llm.tokenizer.chat_template


def test_a_component_param_error_names_its_place_in_the_spec(image_spec):
    image_spec["inputs"]["image"]["encoder"]["params"]["feature_layer"] = 7
    with pytest.raises(SpecError, match=r"^inputs.image.encoder: hf-clip-vision.params.feature_layer is 7"):
        build_model(image_spec, progress=False)


def test_gguf_files_are_refused_for_encoders(image_spec):
    image_spec["inputs"]["image"]["encoder"]["params"] = {"model": "somewhere", "gguf_file": "x.gguf"}
    with pytest.raises(SpecError, match=r"inputs.image.encoder.params: 'gguf_file' works for LLM backbones only"):
        parse_spec(image_spec)


def test_exponent_numbers_in_a_yaml_spec_are_numbers(tmp_path, image_spec):
    # YAML 1.1 (PyYAML alone) reads 2e-2 as a string; everyone writes it as a number
    image_spec["llm"]["params"]["config"]["initializer_range"] = 0.02
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(image_spec).replace("0.02", "2e-2"))
    assert "initializer_range: 2e-2" in (tmp_path / "model.yaml").read_text()
    assert load_spec(tmp_path / "model.yaml").llm.params["config"]["initializer_range"] == 0.02
