"""mmllm-pointcloud: a 'pointcloud' modality (.ply, .npy), the Point-BERT style 'point-bert' encoder and a dataset."""

from __future__ import annotations

from mmllm_sdk import hookimpl
from mmllm_sdk.components import ModalitySpec
from mmllm_sdk.plugins import Lazy

from mmllm_pointcloud.cloud import PointCloud, from_array, load_npy, to_pointcloud
from mmllm_pointcloud.ply import read_ply, write_ply

ENCODER_NAME = "point-bert"
DATASET_NAME = "pointcloud-synthetic"

__version__ = "0.1.0"
__all__ = [
    "POINTCLOUD",
    "PointCloud",
    "from_array",
    "load_npy",
    "read_ply",
    "to_pointcloud",
    "write_ply",
]

POINTCLOUD = ModalitySpec(
    name="pointcloud",
    placeholder="<pointcloud>",
    loaders={".ply": read_ply, ".npy": load_npy},
    normalize=to_pointcloud,
    description="3-D point clouds: xyz with optional rgb, from .ply (ascii or binary) or (N, 3) / (N, 6) .npy arrays.",
)


@hookimpl
def register_modalities(register):
    register(POINTCLOUD)


@hookimpl
def register_encoders(register):
    # Lazy: torch and the encoder module load when a model uses it, not when plugins are listed
    register("pointcloud", ENCODER_NAME, Lazy("mmllm_pointcloud.encoder:PointBertEncoder"))


@hookimpl
def register_datasets(register):
    register(DATASET_NAME, Lazy("mmllm_pointcloud.dataset:build_pointcloud_dataset"))
