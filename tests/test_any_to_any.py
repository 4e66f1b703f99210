"""Any-to-any output: signal tokens, output projectors, diffusers generators, align-output and generation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import mmllm_sdk
from mmllm_sdk.components import AudioClip, SignalVocabulary
from mmllm_sdk.errors import InputError, PluginError, SpecError
from mmllm_sdk.hookspecs import hookimpl
from mmllm_sdk.model.generation import SignalForcing
from mmllm_sdk.plugins import register_plugin, unregister_plugin
from mmllm_sdk.testing import tiny_spec
from mmllm_sdk.testing.tiny_generators import tiny_audioldm_config, tiny_sd_config

K = 4  # signal tokens per output modality in these tests
CAPTIONS = ["a red circle", "a blue square", "a green star", "a yellow cross", "a purple triangle", "an orange ring"]


def image_output(k=K, projector="mlp", **generator_params):
    params = {"config": tiny_sd_config(), "num_inference_steps": 2, **generator_params}
    return {
        "signal_tokens": k,
        "output_projector": {"name": projector},
        "generator": {"name": "diffusers-sd", "params": params},
    }


def audio_output(k=K):
    return {
        "signal_tokens": k,
        "output_projector": {"name": "mlp"},
        "generator": {
            "name": "diffusers-audioldm",
            "params": {"config": tiny_audioldm_config(), "num_inference_steps": 2},
        },
    }


@pytest.fixture
def any_spec(tokenizer_dir):
    """make(outputs): a tiny LLM (sharp random logits) with an image input and the given outputs."""

    def make(**outputs):
        spec = tiny_spec(tokenizer_dir, initializer_range=0.2)
        spec["outputs"] = outputs or {"image": image_output()}
        return spec

    return make


@pytest.fixture
def image_model(any_spec):
    return mmllm_sdk.build_model(any_spec(), progress=False)


def draw(caption):
    return [
        {"role": "user", "content": f"Draw {caption}."},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Here it is."}, {"type": "image", "caption": caption}],
        },
    ]


# signal tokens -------------------------------------------------------------------------------------------


def test_signal_tokens_are_added_to_the_tokenizer_in_order(image_model):
    tokenizer = image_model.llm.tokenizer
    assert image_model.signal_tokens == {"image": ["<img_0>", "<img_1>", "<img_2>", "<img_3>"]}
    assert image_model.signal_ids["image"] == tokenizer.convert_tokens_to_ids(image_model.signal_tokens["image"])
    text = tokenizer.decode(image_model.processor([draw("a red circle")])["input_ids"][0])
    assert "Here it is.\n<img_0><img_1><img_2><img_3>" in text


def test_two_output_modalities_get_their_own_tokens(any_spec):
    model = mmllm_sdk.build_model(any_spec(image=image_output(), audio=audio_output(k=2)), progress=False)
    assert model.signal_tokens["audio"] == ["<aud_0>", "<aud_1>"]
    assert not set(model.signal_ids["image"]) & set(model.signal_ids["audio"])


def test_only_the_signal_rows_of_the_llm_train(image_model):
    trainable = sorted(n for n, p in image_model.named_parameters() if p.requires_grad and n.startswith("llm."))
    assert trainable == ["llm.model.lm_head.signal_rows", "llm.model.model.embed_tokens.signal_rows"]
    rows = dict(image_model.named_parameters())["llm.model.model.embed_tokens.signal_rows"]
    assert rows.shape == (K, image_model.llm.hidden_size)  # not the vocabulary: k rows


def test_an_sft_step_changes_the_signal_rows_and_no_other_row(image_model):
    embedding = image_model.llm.get_input_embeddings()
    before = embedding.weight.detach().clone(), embedding.signal_rows.detach().clone()
    trainable = [p for p in image_model.parameters() if p.requires_grad]
    loss = image_model(**image_model.processor([draw("a red circle")])).loss
    loss.backward()
    torch.optim.SGD(trainable, lr=1.0).step()
    assert torch.equal(embedding.weight, before[0])  # the vocabulary table: untouched
    assert not torch.equal(embedding.signal_rows, before[1])


def test_forcing_completes_a_run_once_the_first_signal_token_is_emitted():
    forcing = SignalForcing({"image": [10, 11, 12]}, vocab_size=16)
    scores = torch.zeros(2, 16)
    after = forcing(torch.tensor([[3, 10], [3, 4]]), scores)
    assert after[0].argmax().item() == 11 and torch.isinf(after[0]).sum().item() == 15  # forced
    assert torch.isinf(after[1, [11, 12]]).all() and after[1, 10].item() == 0  # a run only starts at <img_0>


# errors ---------------------------------------------------------------------------------------------------


def test_zero_signal_tokens_is_refused_before_anything_is_built(any_spec):
    with pytest.raises(SpecError, match=r"outputs.image.signal_tokens: .*greater than or equal to 1"):
        mmllm_sdk.build_model(any_spec(image=image_output(k=0)), skeleton=True)


def test_a_generator_of_another_modality_is_refused(any_spec):
    spec = any_spec(audio=image_output())
    with pytest.raises(SpecError, match=r"outputs.audio.generator.name: 'diffusers-sd' is not a registered generator"):
        mmllm_sdk.build_model(spec, skeleton=True)


def test_an_output_modality_without_signal_tokens_is_refused(any_spec):
    class Plugin:
        @hookimpl
        def register_modalities(self, register):
            register(mmllm_sdk.components.ModalitySpec("smell", "<smell>"))

        @hookimpl
        def register_generators(self, register):
            from mmllm_sdk.default_plugins.generators.diffusers import StableDiffusionGenerator

            register("smell", "sd-smell", StableDiffusionGenerator)

    register_plugin(Plugin(), "smell-plugin")
    try:
        spec = any_spec(
            smell={**image_output(), "generator": {"name": "sd-smell", "params": {"config": tiny_sd_config()}}}
        )
        with pytest.raises(SpecError, match=r"no loaded plugin registers signal tokens for modality 'smell'"):
            mmllm_sdk.build_model(spec, skeleton=True)
    finally:
        unregister_plugin("smell-plugin")


def test_two_plugins_claiming_the_same_token_strings_are_refused():
    class Sketch:  # its vocabulary takes the prefix of the built-in image signal tokens
        @hookimpl
        def register_modalities(self, register):
            register(mmllm_sdk.components.ModalitySpec("sketch", "<sketch>"))

        @hookimpl
        def register_signal_tokens(self, register):
            register("sketch", SignalVocabulary("sketch", num_tokens=1, prefix="img"))

    register_plugin(Sketch(), "sketch-plugin")
    try:
        with pytest.raises(PluginError, match=r"Signal tokens <img_i> are claimed for modality 'image' .* 'sketch'"):
            mmllm_sdk.list_components()
    finally:
        unregister_plugin("sketch-plugin")


def test_an_assistant_part_of_a_modality_without_a_generator_is_refused(image_model):
    conversation = [
        {"role": "user", "content": "Say it."},
        {"role": "assistant", "content": [{"type": "audio", "caption": "a bell"}]},
    ]
    with pytest.raises(
        InputError, match=r"the assistant turn has a 'audio' part, but this model generates only: text, image"
    ):
        image_model.processor([conversation])


def test_a_signal_token_already_in_the_vocabulary_is_refused(any_spec, tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_tokens(["<img_2>"])
    tokenizer.save_pretrained(tmp_path / "tok")
    spec = any_spec()
    spec["llm"]["params"]["tokenizer"] = str(tmp_path / "tok")
    spec["llm"]["params"]["config"]["vocab_size"] = len(tokenizer)
    with pytest.raises(SpecError, match=r"the signal tokens <img_2> are already in the LLM's vocabulary"):
        mmllm_sdk.build_model(spec, progress=False)


# training and generation ----------------------------------------------------------------------------------


def write_captions(path, captions):
    records = [
        {
            "messages": [
                {"role": "user", "content": "Show me."},
                {"role": "assistant", "content": [{"type": "image", "caption": c}]},
            ]
        }
        for c in captions
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def make_recipe(name, spec, data, output_dir, **training):
    """A recipe spec on CPU, seeded, without intermediate checkpoints; ``training`` sets the rest."""
    return {
        "recipe": name,
        "model": spec,
        "data": {"train": str(data)},
        "training": {"output_dir": str(output_dir), "save_strategy": "no", "seed": 0, "use_cpu": True, **training},
    }


ALIGN_SHORT = {
    "per_device_train_batch_size": 4,
    "learning_rate": 1e-2,
    "max_steps": 3,
    "save_strategy": "no",
    "seed": 0,
}


def align_recipe(tmp_path, spec, data, **overrides):
    training = {"per_device_train_batch_size": 4, "learning_rate": 1e-2, "num_train_epochs": 30}
    return {**make_recipe("align-output", spec, data, tmp_path / "align", **training), **overrides}


def projected(model, captions):
    """H_X of each caption as the align-output batch computes it, and the generator's targets."""
    from mmllm_sdk.default_plugins.recipes.align import AlignCollator

    batch = AlignCollator(model, None)([{"messages": draw(c)} for c in captions])
    with torch.no_grad():
        runs, states = model.signal_states(batch["input_ids"], batch["attention_mask"])["image"]  # one run per row
        assert [row for row, _ in runs] == list(range(len(captions)))
        generator = model.output_heads["image"].generator
        return model.project_signals("image", states), generator.condition_targets(list(captions))


COLOURS = ["red", "blue", "green", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "star", "cross"]
ALL_CAPTIONS = [f"a {colour} {shape}" for colour in COLOURS for shape in SHAPES]  # 24
HELD_OUT = ALL_CAPTIONS[::4]  # 6 captions never trained on; each colour once
TRAIN = [c for c in ALL_CAPTIONS if c not in HELD_OUT]


def test_align_output_lowers_the_l2_and_retrieves_held_out_captions(tmp_path, any_spec):
    spec = any_spec()
    before = mmllm_sdk.build_model(spec, progress=False)
    result = mmllm_sdk.train(align_recipe(tmp_path, spec, write_captions(tmp_path / "c.jsonl", TRAIN)))
    predicted, targets = projected(result.model, TRAIN)
    start, _ = projected(before, TRAIN)
    assert torch.nn.functional.mse_loss(predicted, targets) < 0.5 * torch.nn.functional.mse_loss(start, targets)
    predicted, targets = projected(result.model, HELD_OUT)
    distances = torch.cdist(predicted.flatten(1), targets.flatten(1))  # (captions, captions)
    correct = (distances.argmin(dim=1) == torch.arange(len(HELD_OUT))).float().mean().item()
    assert correct > 2 / len(HELD_OUT)  # chance is 1 in 6


def test_align_output_caches_the_llm_states_when_nothing_upstream_trains(tmp_path, any_spec):
    spec = any_spec()
    recipe = align_recipe(
        tmp_path, spec, write_captions(tmp_path / "c.jsonl", CAPTIONS[:4]), trainable=["outputs.*.output_projector"]
    )
    recipe["training"].update(num_train_epochs=2)
    calls = []

    class CountLLMCalls:  # a Trainer callback that hooks the model's LLM at the start of training
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            model.llm.register_forward_hook(lambda *a: calls.append(state.epoch))

        def __getattr__(self, name):
            return lambda *a, **k: None

    mmllm_sdk.train(recipe, callbacks=[CountLLMCalls()])
    assert len(calls) == 1  # 4 captions, one batch: the LLM ran in epoch 1 only; epoch 2 read the cache


def sound(caption):
    return [
        {"role": "user", "content": f"Play {caption}."},
        {"role": "assistant", "content": [{"type": "audio", "caption": caption}]},
    ]


def both(caption):
    return [
        {"role": "user", "content": "Show and play it."},
        {
            "role": "assistant",
            "content": [{"type": "image", "caption": caption}, {"type": "audio", "caption": caption}],
        },
    ]


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory, tokenizer_dir):
    """A model with image and audio outputs after a short SFT on answers that hold signal tokens."""
    tmp_path = tmp_path_factory.mktemp("sft")
    spec = tiny_spec(tokenizer_dir, initializer_range=0.2)
    spec["outputs"] = {"image": image_output(), "audio": audio_output()}
    records = [{"messages": draw("a red circle")}, {"messages": sound("a bell")}, {"messages": both("a drum")}]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    training = {"per_device_train_batch_size": 3, "learning_rate": 5e-2, "max_steps": 40}
    recipe = make_recipe("sft", spec, data, tmp_path / "run", **training)
    return mmllm_sdk.train(recipe).model, tmp_path / "run"


def test_after_a_short_sft_generate_emits_the_signal_tokens_and_returns_an_image(sft_model, tmp_path):
    model, _ = sft_model
    response = model.generate(
        [{"role": "user", "content": "Draw a red circle."}], max_new_tokens=12, output_dir=tmp_path
    )
    assert model.signal_ids["image"] == response.token_ids[response.token_ids.index(model.signal_ids["image"][0]) :][:K]
    (image,) = response.outputs["image"]
    assert isinstance(image, Image.Image) and image.size == (32, 32)
    assert response.files["image"] == [str(tmp_path / "image-0.png")]
    assert Image.open(response.files["image"][0]).size == (32, 32)


def test_audio_likewise_returns_a_waveform(sft_model, tmp_path):
    model, _ = sft_model
    response = model.generate([{"role": "user", "content": "Play a bell."}], max_new_tokens=12, output_dir=tmp_path)
    (clip,) = response.outputs["audio"]
    assert isinstance(clip, AudioClip) and clip.samples.ndim == 1 and len(clip.samples) > 0
    assert response.files["audio"] == [str(tmp_path / "audio-0.wav")]


def test_one_answer_can_hold_several_output_modalities(sft_model):
    model, _ = sft_model
    response = model.generate([{"role": "user", "content": "Show and play it."}], max_new_tokens=16)
    assert set(response.outputs) == {"image", "audio"}


def test_the_checkpoint_keeps_the_signal_rows_and_answers_the_same(sft_model):
    model, folder = sft_model
    reloaded = mmllm_sdk.MMLLM.from_pretrained(folder)
    assert reloaded.signal_ids == model.signal_ids  # the same ids for the same tokens, whatever the spec's order
    for question in ("Draw a red circle.", "Play a bell."):
        asked = [{"role": "user", "content": question}]
        answer, again = model.generate(asked, max_new_tokens=12), reloaded.generate(asked, max_new_tokens=12)
        assert again.token_ids == answer.token_ids and set(again.outputs) == set(answer.outputs)


def test_an_any_to_any_model_is_not_exported_as_llava(image_model, tmp_path):
    from mmllm_sdk.default_plugins.exporters.hf_llava import export_hf_llava
    from mmllm_sdk.errors import ExportError

    with pytest.raises(ExportError, match=r"it generates image \(an outputs section\), and LLaVA has no output side"):
        export_hf_llava(image_model, tmp_path / "out")


def test_an_llm_without_a_vocabulary_head_cannot_take_signal_tokens():
    from transformers import LlamaConfig, LlamaModel

    from mmllm_sdk.model.signals import install_signal_rows
    from mmllm_sdk.testing import tiny_llm_config

    config = {k: v for k, v in tiny_llm_config().items() if k != "model_type"}
    base = LlamaModel(LlamaConfig(**config))  # no LM head: get_output_embeddings() is None
    with pytest.raises(SpecError, match=r"output modalities need an nn.Embedding and an nn.Linear head"):
        install_signal_rows(base, [1, 2])


# a text-conditioned generator: the text between <img_0> and <img_1> is what it renders -------------------


class TextRenderer(mmllm_sdk.components.TextConditionedGenerator):
    """An external tool as a generator: draws the text the LLM wrote into a small image."""

    def __init__(self, params):
        super().__init__()
        self.modality = "image"
        self.texts = []  # what it was asked to render

    def generate_from_text(self, texts, **kwargs):
        from PIL import ImageDraw

        self.texts.extend(texts)
        images = []
        for text in texts:
            image = Image.new("RGB", (64, 16), "white")
            ImageDraw.Draw(image).text((2, 2), text, fill="black")
            images.append(image)
        return images


@pytest.fixture
def text_renderer():
    class Plugin:
        @hookimpl
        def register_generators(self, register):
            register("image", "text-render", TextRenderer)

    register_plugin(Plugin(), "text-render-plugin")
    yield {"signal_tokens": 2, "generator": {"name": "text-render"}}
    unregister_plugin("text-render-plugin")


def test_a_text_conditioned_generator_renders_the_text_between_its_signal_tokens(tmp_path, any_spec, text_renderer):
    conversation = [
        {"role": "user", "content": "Write hello."},
        {"role": "assistant", "content": [{"type": "image", "text": "hello"}]},
    ]
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"messages": conversation}) + "\n")
    training = {"per_device_train_batch_size": 1, "learning_rate": 5e-2, "max_steps": 40}
    recipe = make_recipe("sft", any_spec(image=text_renderer), data, tmp_path / "run", **training)
    recipe["peft"] = {"method": "lora", "r": 8}  # the LLM learns to write the text itself: adapters, not only rows
    model = mmllm_sdk.train(recipe).model
    assert "<img_0>hello<img_1>" in model.llm.tokenizer.decode(model.processor([conversation])["input_ids"][0])
    response = model.generate([{"role": "user", "content": "Write hello."}], max_new_tokens=12)
    assert model.generators["image"].texts == ["hello"]
    assert response.outputs["image"][0].size == (64, 16)


def test_a_text_conditioned_generator_takes_two_signal_tokens_and_no_output_projector(any_spec, text_renderer):
    with pytest.raises(SpecError, match=r"outputs.image.signal_tokens is 4, .* it needs 2 signal tokens"):
        mmllm_sdk.build_model(any_spec(image={**text_renderer, "signal_tokens": 4}), skeleton=True)
    with pytest.raises(SpecError, match=r"outputs.image.output_projector is set, .* remove output_projector"):
        mmllm_sdk.build_model(any_spec(image={**text_renderer, "output_projector": {"name": "mlp"}}), skeleton=True)


def test_an_embedding_conditioned_generator_needs_an_output_projector(any_spec):
    output = image_output()
    del output["output_projector"]
    with pytest.raises(SpecError, match=r"outputs.image.output_projector is missing: the generator 'diffusers-sd'"):
        mmllm_sdk.build_model(any_spec(image=output), skeleton=True)


# the optional denoising loss ------------------------------------------------------------------------------


def test_the_sd_denoising_loss_sends_its_gradient_to_the_conditioning(image_model):
    generator = image_model.generators["image"]
    conditioning = generator.condition_targets(["a red circle"]).clone().requires_grad_(True)
    image = Image.new("RGB", (40, 40), (200, 30, 30))
    loss = generator.denoising_loss(conditioning, [image])
    loss.backward()
    assert torch.isfinite(loss) and conditioning.grad.abs().sum() > 0
    assert all(p.grad is None for p in generator.parameters())  # the generator stays frozen


def test_align_output_adds_the_denoising_loss_on_caption_records(tmp_path, any_spec):
    shapes = {"task": "captions", "num_examples": 4, "image_size": 32, "out_dir": str(tmp_path / "shapes")}
    recipe = align_recipe(tmp_path, any_spec(), "unused", options={"denoising_weight": 1.0})
    recipe["data"] = {"train": {"dataset": "synthetic-shapes", "params": shapes}}
    recipe["training"].update(num_train_epochs=2)
    result = mmllm_sdk.train(recipe)
    assert result.metrics["train_loss"] > 0 and torch.isfinite(torch.tensor(result.metrics["train_loss"]))


def test_the_denoising_loss_needs_the_item_each_caption_describes(tmp_path, any_spec):
    recipe = align_recipe(tmp_path, any_spec(), write_captions(tmp_path / "c.jsonl", CAPTIONS[:2]))
    recipe["options"] = {"denoising_weight": 1.0}
    with pytest.raises(
        InputError, match=r"denoising_weight needs the image each caption describes, and 'a red circle'"
    ):
        mmllm_sdk.train(recipe)


def test_sft_trains_only_the_signal_rows_and_the_projectors(sft_model):
    model, _ = sft_model
    fresh = mmllm_sdk.build_model(model.spec, progress=False)  # the same spec and seed: the starting weights
    start = dict(fresh.named_parameters())
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, start[name])}
    assert changed
    assert all(
        "signal_rows" in name or name.startswith(("input_projectors.", "output_projectors.")) for name in changed
    ), sorted(changed)
    assert not any(name.startswith(("generators.", "encoders.")) for name in changed)


def test_mmllm_chat_saves_the_generated_items_and_prints_where(sft_model, tmp_path):
    import subprocess
    import sys

    _, folder = sft_model
    command = [
        sys.executable,
        "-m",
        "mmllm_sdk.cli",
        "chat",
        str(folder),
        "Draw a red circle.",
        "--max-new-tokens",
        "12",
    ]
    done = subprocess.run([*command, "--output-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    saved = tmp_path / "turn-0" / "image-0.png"
    assert f"[image: {saved}]" in done.stdout
    assert Image.open(saved).size == (32, 32)


class BrokenConditionGenerator(mmllm_sdk.components.ModalityGenerator):
    """A generator whose condition shape cannot be met: zero tokens."""

    def __init__(self, params):
        super().__init__()
        self.modality = "image"
        self.condition_spec = mmllm_sdk.components.ConditionSpec(0, 8)

    def generate(self, conditioning, **kwargs):
        return []

    def condition_targets(self, texts):
        return torch.zeros(len(texts), 0, 8)


def test_a_generator_whose_condition_shape_cannot_be_met_is_refused(any_spec):
    class Plugin:
        @hookimpl
        def register_generators(self, register):
            register("image", "broken-condition", BrokenConditionGenerator)

    register_plugin(Plugin(), "broken-condition-plugin")
    try:
        spec = any_spec(image={**image_output(), "generator": {"name": "broken-condition"}})
        with pytest.raises(
            PluginError, match=r"generator 'broken-condition' .* condition_spec ConditionSpec\(num_tokens=0"
        ):
            mmllm_sdk.build_model(spec, skeleton=True)
    finally:
        unregister_plugin("broken-condition-plugin")


def test_mmllm_validate_shows_each_output_and_its_conditioning(any_spec, tmp_path, capsys):
    import yaml

    from mmllm_sdk.cli import main

    path = tmp_path / "any.yaml"
    path.write_text(yaml.safe_dump(any_spec(image=image_output(projector="transformer-queries"))))
    assert main(["validate", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "output image  <img_0> … <img_3> (k=4) -> transformer-queries -> diffusers-sd (16 x 16)" in lines


def test_signal_states_of_a_left_padded_row_equal_those_of_the_row_alone(image_model):
    ids = image_model.processor([draw("a red circle")])["input_ids"]  # (1, T)
    pad = image_model.llm.tokenizer.pad_token_id
    padded = torch.cat([torch.full((1, 3), pad), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], dim=1)
    with torch.no_grad():
        ((alone_runs, alone),) = image_model.signal_states(ids, torch.ones_like(ids)).values()
        ((shifted_runs, shifted),) = image_model.signal_states(padded, mask).values()
    assert [(row, start + 3) for row, start in alone_runs] == shifted_runs
    torch.testing.assert_close(shifted, alone, atol=1e-5, rtol=1e-4)


def test_generator_kwargs_can_be_given_per_output_modality(image_model):
    from mmllm_sdk.model.generation import generator_kwargs_for

    per_modality = {"image": {"num_inference_steps": 3}}
    assert generator_kwargs_for(image_model, "image", per_modality) == {"num_inference_steps": 3}
    assert generator_kwargs_for(image_model, "image", {"seed": 1}) == {"seed": 1}


@pytest.mark.parametrize("method", ["lora", "prefix"])
def test_sft_with_adapters_continues_from_an_aligned_checkpoint_and_generates(tmp_path, any_spec, method):
    """The documented chain: align-output -> SFT with peft (continuing from the aligned folder) -> generate."""
    from safetensors.torch import load_file

    captions = write_captions(tmp_path / "c.jsonl", CAPTIONS[:4])
    aligned = mmllm_sdk.train(
        align_recipe(tmp_path, any_spec(), captions, training={**ALIGN_SHORT, "output_dir": str(tmp_path / "align")})
    )
    projector = {n: p.detach().clone() for n, p in aligned.model.output_projectors.named_parameters()}
    embedding_rows = aligned.model.llm.get_input_embeddings().signal_rows.detach().clone()
    data = tmp_path / "draw.jsonl"
    data.write_text(json.dumps({"messages": draw("a red circle")}) + "\n")
    peft = {"method": "lora", "r": 4} if method == "lora" else {"method": "prefix", "num_virtual_tokens": 2}
    training = {"per_device_train_batch_size": 1, "learning_rate": 5e-2, "max_steps": 30}
    recipe = {**make_recipe("sft", str(tmp_path / "align"), data, tmp_path / "sft", **training), "peft": peft}
    model = mmllm_sdk.train(recipe).model

    output_projector = dict(model.output_projectors.named_parameters())
    assert all(torch.equal(output_projector[n], value) for n, value in projector.items())  # aligned, frozen in SFT
    assert not torch.equal(model.llm.get_input_embeddings().signal_rows, embedding_rows)  # aligned, then tuned
    saved = load_file(tmp_path / "sft" / "trainable.safetensors")
    assert any(("lora_" if method == "lora" else "prompt_encoder") in name for name in saved)
    assert sum("signal_rows" in name for name in saved) == 2 and sum(n.startswith("output_projectors.") for n in saved)
    asked = [{"role": "user", "content": "Draw a red circle."}]
    response = model.generate(asked, max_new_tokens=12, output_dir=tmp_path / "out")
    (image,) = response.outputs["image"]
    assert isinstance(image, Image.Image) and response.files["image"] == [str(tmp_path / "out" / "image-0.png")]
    reloaded = mmllm_sdk.MMLLM.from_pretrained(tmp_path / "sft", progress=False)
    assert reloaded.generate(asked, max_new_tokens=12).token_ids == response.token_ids


def test_align_output_under_torchrun_averages_gradients_like_one_process(tmp_path, any_spec):
    """Its loss reaches into the model's parts, and still goes through DDP: two processes = one at the same batch."""
    import os
    import shutil
    import subprocess
    import sys

    import yaml
    from safetensors.torch import load_file

    data = write_captions(tmp_path / "c.jsonl", CAPTIONS[:4])
    training = {**ALIGN_SHORT, "max_steps": -1, "num_train_epochs": 2, "per_device_train_batch_size": 2}
    recipe = align_recipe(tmp_path, any_spec(), data, training={**training, "output_dir": str(tmp_path / "ddp")})
    (tmp_path / "align.yaml").write_text(yaml.safe_dump(recipe))
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    command = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "mmllm_sdk.cli", "train", "align.yaml"]
    done = subprocess.run(command, cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one = {**training, "per_device_train_batch_size": 4, "output_dir": str(tmp_path / "one")}
    mmllm_sdk.train(align_recipe(tmp_path, any_spec(), data, training=one))
    ddp, single = (
        load_file(tmp_path / "ddp" / "trainable.safetensors"),
        load_file(tmp_path / "one" / "trainable.safetensors"),
    )
    assert sorted(ddp) == sorted(single) and any(name.startswith("output_projectors.") for name in ddp)
    for name, tensor in single.items():
        torch.testing.assert_close(ddp[name], tensor, rtol=1e-5, atol=1e-6)
