"""The plugin hooks: one ``register_*`` hook per kind of component a plugin can add, and one for CLI commands."""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("mmllm")
hookimpl = pluggy.HookimplMarker("mmllm")


@hookspec
def register_modalities(register):
    """Register modalities: ``register(ModalitySpec(name, placeholder, loaders))``.

    :param register: callback taking one :class:`~mmllm_sdk.components.modality.ModalitySpec`.
    """


@hookspec
def register_encoders(register):
    """Register modality encoders: ``register(modality, name, factory)``.

    :param register: callback taking the modality name, the encoder name and a
        factory ``factory(params: dict) -> ModalityEncoder`` (usually the encoder class).
    """


@hookspec
def register_projectors(register):
    """Register input projectors: ``register(name, factory)``.

    :param register: callback taking the projector name and a factory
        ``factory(in_dim, out_dim, num_input_tokens, params) -> InputProjector``.
    """


@hookspec
def register_llms(register):
    """Register LLM backbones: ``register(name, factory)``.

    :param register: callback taking the backbone name and ``factory(params) -> LLMBackbone``.
    """


@hookspec
def register_signal_tokens(register):
    """Register signal-token vocabularies: ``register(modality, vocabulary)``.

    :param register: callback taking the modality name and a
        :class:`~mmllm_sdk.components.signals.SignalVocabulary`.
    """


@hookspec
def register_output_projectors(register):
    """Register output projectors: ``register(name, factory)``.

    :param register: callback taking the name and a factory
        ``factory(llm_dim, condition_spec, num_signal_tokens, params) -> OutputProjector``.
    """


@hookspec
def register_generators(register):
    """Register modality generators: ``register(modality, name, factory)``.

    :param register: callback taking the modality, the generator name and ``factory(params) -> ModalityGenerator``.
    """


@hookspec
def register_recipes(register):
    """Register training recipes: ``register(name, recipe)``.

    :param register: callback taking the recipe name and the recipe object.
    """


@hookspec
def register_datasets(register):
    """Register data sources: ``register(name, factory)``.

    :param register: callback taking the data source name and ``factory(params) -> dataset``.
    """


@hookspec
def register_commands(cli):
    """Register ``mmllm`` subcommands: ``cli.command(name, run, help=..., description=...)``.

    :param cli: a :class:`~mmllm_sdk.cli.CommandLine`; ``cli.command`` returns the command's
        ``argparse.ArgumentParser`` (add its arguments to it) and ``mmllm NAME …`` calls
        ``run(args)`` with the parsed ``argparse.Namespace``; ``run`` returns the exit status.
    """


@hookspec
def register_exporters(register):
    """Register export formats for ``mmllm export --format NAME``: ``register(name, exporter)``.

    :param register: callback taking the format name and ``exporter(model, output_dir) -> Path``
        (or an :class:`~mmllm_sdk.registry.Exporter`, which adds what ``mmllm export`` says about it).
    """


@hookspec
def register_metrics(register):
    """Register ways to score answers for ``mmllm eval --metric NAME``: ``register(name, metric)``.

    :param register: callback taking the metric name and ``score(prediction, reference) -> float`` (0 wrong, 1 right),
        or a :class:`~mmllm_sdk.registry.Metric`, which adds its description and how it is computed.
    """


@hookspec
def register_rewards(register):
    """Register rewards for the ``grpo`` recipe: ``register(name, factory)``.

    :param register: callback taking the reward name and ``factory(params) -> Reward`` (or a plain
        ``score(completions, **kwargs) -> list[float]``); see :class:`~mmllm_sdk.registry.Reward`.
    """
