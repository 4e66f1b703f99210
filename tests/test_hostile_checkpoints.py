"""Hostile, corrupt and edited checkpoints: each is refused with a CheckpointError naming the file and what is wrong;
nothing hangs, no code runs from a checkpoint without the caller's opt-in, and saving never overwrites or writes
non-finite weights."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import torch
from hostile import finishes

from mmllm_sdk import MMLLM
from mmllm_sdk.errors import CheckpointError
from mmllm_sdk.model.checkpoint import MANIFEST, WEIGHTS, spec_digest


@pytest.fixture
def saved(image_model, tmp_path):
    image_model.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def load(folder, **kwargs):
    return MMLLM.from_pretrained(folder, progress=False, **kwargs)


def edit_manifest(folder, change, *, keep_digest=True):
    """Change mmllm.json as a careless hand (digest left as it was) or a forger (digest recomputed) would."""
    data = json.loads((folder / MANIFEST).read_text())
    change(data)
    if not keep_digest:
        data["digest"]["spec"] = spec_digest(data["spec"])
    (folder / MANIFEST).write_text(json.dumps(data))


# --- the manifest --------------------------------------------------------------------------------------------------


def test_a_manifest_that_is_not_json_names_the_file(saved):
    (saved / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match=r"mmllm\.json.*not valid JSON"):
        load(saved)


def test_a_manifest_that_is_not_utf8_names_the_file_and_byte(saved):
    (saved / MANIFEST).write_bytes(b'{"format": "\xff"}')
    with pytest.raises(CheckpointError, match=r"mmllm\.json.*not UTF-8.*byte 12"):
        load(saved)


def test_a_manifest_nested_past_the_bound_is_refused(saved):
    (saved / MANIFEST).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match=r"mmllm\.json.*more than 64 levels deep"):
        load(saved)


def test_a_manifest_missing_a_field_lists_the_field(saved):
    edit_manifest(saved, lambda data: data["components"]["llm"].pop("kind"))
    with pytest.raises(
        CheckpointError, match=r"mmllm\.json.*not a valid mmllm-checkpoint manifest(.|\n)*components\.llm\.kind"
    ):
        load(saved)


def test_a_manifest_field_of_the_wrong_type_names_field_and_value(saved):
    edit_manifest(saved, lambda data: data.update(trainable={"input_projectors.image.linear_1.bias": "32"}))
    with pytest.raises(CheckpointError, match=r"trainable\.input_projectors\.image\.linear_1\.bias.*'32'"):
        load(saved)


def test_a_manifest_from_a_newer_format_asks_for_an_upgrade(saved):
    edit_manifest(saved, lambda data: data.update(format_version=99))
    with pytest.raises(CheckpointError, match=r"checkpoint format 99.*upgrade"):
        load(saved)


def test_a_manifest_of_format_2_without_its_digest_was_edited(saved):
    edit_manifest(saved, lambda data: data.pop("digest"))
    with pytest.raises(CheckpointError, match=r"mmllm\.json' has no digest"):
        load(saved)


def test_a_manifest_that_is_a_fifo_is_refused_without_blocking(saved):
    (saved / MANIFEST).unlink()
    os.mkfifo(saved / MANIFEST)
    error = finishes(lambda: load(saved))
    assert isinstance(error, CheckpointError) and "mmllm.json" in str(error) and "FIFO" in str(error)


def test_a_manifest_that_links_to_dev_zero_is_refused_without_reading_it(saved):
    (saved / MANIFEST).unlink()
    (saved / MANIFEST).symlink_to("/dev/zero")
    error = finishes(lambda: load(saved))
    assert isinstance(error, CheckpointError) and "not a regular file" in str(error)


def test_a_folder_without_a_manifest_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"has no mmllm\.json"):
        load(tmp_path)


# --- digests: an edited spec or replaced weights never load as a different model --------------------------------


def test_an_edited_seed_is_caught_by_the_spec_digest(saved):
    edit_manifest(saved, lambda data: data["spec"].update(seed=7))
    with pytest.raises(CheckpointError, match=r"spec in .*mmllm\.json' does not match its digest"):
        load(saved)


def test_weights_replaced_by_another_models_are_caught_by_the_digest(saved, image_spec, tmp_path):
    from mmllm_sdk import build_model

    other = build_model({**image_spec, "seed": 1}, progress=False)
    other.save_pretrained(tmp_path / "other")
    shutil.copyfile(tmp_path / "other" / WEIGHTS, saved / WEIGHTS)
    with pytest.raises(CheckpointError, match=r"trainable\.safetensors' does not match the digest"):
        load(saved)


def test_truncated_weights_are_caught_before_they_are_read(saved):
    data = (saved / WEIGHTS).read_bytes()
    (saved / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"trainable\.safetensors' does not match the digest"):
        load(saved)


def test_weights_that_are_a_fifo_are_refused_without_blocking(saved):
    (saved / WEIGHTS).unlink()
    os.mkfifo(saved / WEIGHTS)
    error = finishes(lambda: load(saved))
    assert isinstance(error, CheckpointError) and "trainable.safetensors" in str(error)


def test_missing_weights_say_the_checkpoint_is_incomplete(saved):
    (saved / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match=r"has no trainable\.safetensors"):
        load(saved)


# --- no code from a checkpoint without the opt-in ---------------------------------------------------------------


def test_a_checkpoint_asking_for_remote_code_is_refused_and_nothing_runs(saved, tmp_path):
    marker = tmp_path / "code-ran"
    folder = tmp_path / "remote-model"
    folder.mkdir()
    (folder / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = {"model_type": "evil", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}
    (folder / "config.json").write_text(json.dumps(config))

    def forge(data):  # a checkpoint crafted to load its LLM from that folder, with remote code, digest recomputed
        data["spec"]["llm"]["params"] = {"model": str(folder), "trust_remote_code": True}

    edit_manifest(saved, forge, keep_digest=False)
    with pytest.raises(CheckpointError, match=r"asks to run Python code.*llm\.params\.trust_remote_code: True"):
        load(saved)
    assert not marker.exists()


def test_with_the_opt_in_a_checkpoint_asking_for_remote_code_passes_the_gate(saved):
    def ask(data):  # a config-built LLM ignores the flag: the model loads, the gate was passed
        data["spec"]["llm"]["params"]["trust_remote_code"] = True

    edit_manifest(saved, ask, keep_digest=False)
    model = load(saved, trust_remote_code=True)
    assert model.spec.llm.params["trust_remote_code"] is True


# --- saving ---------------------------------------------------------------------------------------------------------


def test_saving_weights_with_nan_is_refused_and_writes_nothing(image_model, tmp_path):
    with torch.no_grad():
        next(image_model.input_projectors["image"].parameters())[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"NaN or infinite.*input_projectors\.image\.linear_1\.weight"):
        image_model.save_pretrained(tmp_path / "diverged")
    assert not (tmp_path / "diverged").exists()
    assert os.listdir(tmp_path) == []  # no staging folder left behind either


def test_saving_over_an_existing_checkpoint_needs_overwrite_and_changes_nothing(saved, image_model):
    before = {path.name: path.read_bytes() for path in saved.iterdir()}
    with pytest.raises(CheckpointError, match=r"ckpt' already exists and is not empty; pass overwrite=True"):
        image_model.save_pretrained(saved)
    assert {path.name: path.read_bytes() for path in saved.iterdir()} == before


def test_saving_over_a_regular_file_needs_overwrite_and_keeps_the_file(image_model, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match=r"notes\.txt' already exists; pass overwrite=True"):
        image_model.save_pretrained(tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_overwrite_replaces_a_checkpoint_whole(saved, image_model):
    (saved / "stale.txt").write_text("from before")
    image_model.save_pretrained(saved, overwrite=True)
    assert sorted(path.name for path in saved.iterdir()) == [MANIFEST, WEIGHTS]
    load(saved)


def test_a_fifo_in_the_way_is_never_replaced_even_with_overwrite(image_model, tmp_path):
    os.mkfifo(tmp_path / "pipe")  # stands in for a device: a path that is not a file, folder or link
    with pytest.raises(
        CheckpointError, match=r"Cannot save the checkpoint at '.*pipe': it is a device, FIFO or socket"
    ):
        image_model.save_pretrained(tmp_path / "pipe", overwrite=True)
    assert stat.S_ISFIFO(os.lstat(tmp_path / "pipe").st_mode) and os.listdir(tmp_path) == ["pipe"]
