"""Errors the SDK raises: each is a sentence saying what was expected, what was found and what to do."""

from __future__ import annotations


class MMLLMError(Exception):
    """Base class of every error the SDK raises on purpose."""


class SpecError(MMLLMError, ValueError):
    """A model or recipe spec is malformed, names an unknown component or has a bad parameter."""


class DimensionError(SpecError):
    """Two components cannot be joined: a dimension or token count does not fit."""


class UnknownComponentError(SpecError, KeyError):
    """A spec names a component, modality or recipe no loaded plugin registers."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PluginError(MMLLMError):
    """A plugin failed while registering or running one of its components."""


class DuplicateComponentError(PluginError):
    """Two plugins register a component under the same name."""


class InputError(MMLLMError, ValueError):
    """A conversation, a modality file or a batch cannot be used as given."""


class DataError(InputError):
    """A training or evaluation data file holds a malformed record; the message names file:line."""


class PlaceholderMismatchError(InputError):
    """The number of modality placeholders differs from the number of modality inputs."""


class CheckpointError(MMLLMError):
    """A checkpoint directory is incomplete, corrupt or was written by something we cannot rebuild."""


class MissingPluginError(CheckpointError):
    """A checkpoint needs components from plugins that are not installed."""


class TrainingError(MMLLMError):
    """Training cannot go on: a loss or gradient is not finite, or the output folder holds something to keep."""


class ExportError(MMLLMError):
    """A model cannot be written in the requested foreign format."""
