"""mmllm-depth: a 'depth' modality (16-bit PNG / .npy depth maps), the depth-vit encoder and a synthetic dataset."""

from __future__ import annotations

from mmllm_sdk import hookimpl
from mmllm_sdk.plugins import Lazy

from mmllm_depth.modality import DEPTH, MODALITY, PLACEHOLDER, DepthMap, load_npy, load_png, to_depth

ENCODER_NAME = "depth-vit"
DATASET_NAME = "depth-synthetic"

__all__ = [
    "DATASET_NAME",
    "DEPTH",
    "ENCODER_NAME",
    "MODALITY",
    "PLACEHOLDER",
    "DepthMap",
    "load_npy",
    "load_png",
    "to_depth",
]


@hookimpl
def register_modalities(register):
    register(DEPTH)


@hookimpl
def register_encoders(register):
    register(MODALITY, ENCODER_NAME, Lazy("mmllm_depth.encoder:DepthViTEncoder"))


@hookimpl
def register_datasets(register):
    register(DATASET_NAME, Lazy("mmllm_depth.dataset:build_depth_dataset"))
