"""Built-in data sources: ``synthetic-shapes``, generated images with exact ground truth."""

from __future__ import annotations

from mmllm_sdk.data.synthetic import DATASET_NAME, build_synthetic_dataset  # numpy and pydantic; Pillow when called
from mmllm_sdk.hookspecs import hookimpl


@hookimpl
def register_datasets(register):
    register(DATASET_NAME, build_synthetic_dataset)
