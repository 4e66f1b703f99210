"""Reading a run's data: data files through the built-in ``files`` data source, or a registered data source, checked
against the model's modalities (``mmllm train``, ``mmllm eval`` and ``mmllm probe`` read it the same way)."""

from __future__ import annotations

from typing import Any

from mmllm_sdk.data.formats import DataReport
from mmllm_sdk.errors import PluginError, SpecError
from mmllm_sdk.registry import get_registry
from mmllm_sdk.training.spec import DatasetSource
from mmllm_sdk.validation import validate


def read_data(
    source: str | list[str] | DatasetSource | dict[str, Any], modalities: dict[str, Any], **file_options: Any
) -> DataReport:
    """Examples from data files (the built-in ``files`` data source reads them, with ``file_options``: ``format``,
    ``base_dir``, ``skip_invalid``) or a registered data source (``{"dataset": name, "params": {…}}``), checked
    against the model's modalities."""
    if isinstance(source, dict):
        source = validate(DatasetSource, source, where="data")
    if not isinstance(source, DatasetSource):
        source = DatasetSource(
            dataset="files", params={"paths": source, **file_options, "modalities": list(modalities)}
        )
    entry = get_registry().get("datasets", source.dataset, where="data: dataset")
    params = source.params
    if (schema := getattr(entry.value, "Params", None)) is not None:
        params = validate(schema, params, where=f"data.{source.dataset}.params").model_dump()
    report = entry.build(params)
    if not isinstance(report, DataReport):
        raise PluginError(
            f"Plugin {entry.plugin!r}: the {entry.label} returned a {type(report).__name__}, not a DataReport."
        )
    for modality in report.media_counts():
        if modality not in modalities:
            raise SpecError(
                f"data: dataset {source.dataset!r} gives {modality} inputs, but the model takes only "
                f"{', '.join(modalities) or 'text'}; add an inputs.{modality} entry or pick another data source."
            )
    return report
