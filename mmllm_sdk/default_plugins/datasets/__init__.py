"""Built-in data sources: ``synthetic-shapes``, generated images with exact ground truth, and ``files``, the
``.jsonl`` / ``.json`` data files a recipe's ``data.train`` names."""

from __future__ import annotations

from mmllm_sdk.default_plugins.datasets import files
from mmllm_sdk.default_plugins.datasets.synthetic import DATASET_NAME, build_synthetic_dataset  # numpy, pydantic
from mmllm_sdk.hookspecs import hookimpl


@hookimpl
def register_datasets(register):
    register(DATASET_NAME, build_synthetic_dataset)
    register(files.DATASET_NAME, files.build_files_dataset)
