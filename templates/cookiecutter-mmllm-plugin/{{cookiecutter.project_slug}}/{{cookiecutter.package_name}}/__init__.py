"""{{ cookiecutter.project_slug }}: the ``{{ cookiecutter.modality }}`` modality, the ``{{ cookiecutter.encoder_name }}`` encoder and ``{{ cookiecutter.dataset_name }}`` data."""

from __future__ import annotations

from mmllm_sdk import hookimpl
from mmllm_sdk.plugins import Lazy

from {{ cookiecutter.package_name }}.modality import CHANNELS, MODALITY, to_signal

__all__ = ["CHANNELS", "MODALITY", "to_signal"]


@hookimpl
def register_modalities(register):
    register(MODALITY)


@hookimpl
def register_encoders(register):
    # Lazy: the encoder module (and torch) is imported when a model uses it, not when plugins are listed
    register("{{ cookiecutter.modality }}", "{{ cookiecutter.encoder_name }}", Lazy("{{ cookiecutter.package_name }}.encoder:PatchEncoder"))


@hookimpl
def register_datasets(register):
    register("{{ cookiecutter.dataset_name }}", Lazy("{{ cookiecutter.package_name }}.dataset:build_dataset"))
