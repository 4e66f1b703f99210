"""The component registry: what every loaded plugin registered, checked for duplicates."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmllm_sdk import plugins
from mmllm_sdk.components.modality import ModalitySpec
from mmllm_sdk.components.signals import SignalVocabulary
from mmllm_sdk.errors import DuplicateComponentError, MMLLMError, PluginError, UnknownComponentError


@dataclass(frozen=True)
class Kind:
    name: str  # "encoders"
    hook: str  # "register_encoders"
    noun: str  # "encoder"
    per_modality: bool  # keyed by (modality, name) instead of name


KINDS = {
    k.name: k
    for k in (
        Kind("modalities", "register_modalities", "modality", False),
        Kind("encoders", "register_encoders", "encoder", True),
        Kind("projectors", "register_projectors", "input projector", False),
        Kind("llms", "register_llms", "LLM backbone", False),
        Kind("signal_tokens", "register_signal_tokens", "signal-token vocabulary", False),
        Kind("output_projectors", "register_output_projectors", "output projector", False),
        Kind("generators", "register_generators", "generator", True),
        Kind("recipes", "register_recipes", "recipe", False),
        Kind("datasets", "register_datasets", "dataset", False),
        Kind("exporters", "register_exporters", "exporter", False),
        Kind("metrics", "register_metrics", "metric", False),
        Kind("rewards", "register_rewards", "reward", False),
    )
}


@dataclass(frozen=True)
class Exporter:
    """An export format (``register_exporters``): the function that writes it and what ``mmllm export`` says of it.
    A plugin may register the function alone, or a Lazy naming it: the registry wraps it without description or usage.
    """

    export: Callable[[Any, Path], Any] | plugins.Lazy  # export(model, output_dir) -> the folder (or file) written
    description: str = ""  # completes "NAME …" in `mmllm export --help`: "writes a folder that X loads (…)."
    usage: str = ""  # shown after "Wrote PATH": "load it with X.from_pretrained"

    def __call__(self, model: Any, output_dir: str | Path) -> Path:
        function = self.export.resolve() if isinstance(self.export, plugins.Lazy) else self.export
        return Path(function(model, Path(output_dir)))


@dataclass(frozen=True)
class Metric:
    """How answers are scored (``register_metrics``): ``score(prediction, reference)``, from 0 (wrong) to 1 (right),
    for each item. ``by_likelihood``: the model picks among the item's options by log-likelihood, without
    generating, and that option is scored as the prediction. ``labels``: references are labels (a confusion matrix)."""

    score: Callable[[str, str], float]
    description: str = ""  # completes "NAME …" in `mmllm eval --help`: "is right when …"
    by_likelihood: bool = False
    labels: bool = False

    def __call__(self, prediction: str, reference: str) -> float:
        return float(self.score(prediction, reference))


@dataclass(frozen=True)
class Reward:
    """A reward for ``grpo``, made by a ``register_rewards`` factory from the recipe's ``params``: ``score(completions,
    references=..., prompts=...)`` returns one number per completion (None: does not apply to it); completions are
    texts, references the prompts' answers (None for a prompt without one), prompts their Conversations.
    ``needs_reference``: refuse prompts without a reference before training starts."""

    score: Callable[..., Any]
    needs_reference: bool = True
    description: str = ""  # completes "NAME …" in the docs' and `mmllm plugins`' lists: "is 1 when …"


@dataclass(frozen=True)
class Registration:
    kind: str
    name: str
    modality: str | None
    # what the plugin passed: a factory, a ModalitySpec, a SignalVocabulary, a Recipe, a Lazy or an Exporter
    registered: Any
    plugin: str

    @property
    def value(self) -> Any:
        """The registered object, imported now if the plugin registered it as ``Lazy("module:attribute")``."""
        return self.registered.resolve() if isinstance(self.registered, plugins.Lazy) else self.registered

    def build(self, *args: Any, **kwargs: Any) -> Any:
        """Call the registered factory; an unexpected exception becomes a PluginError naming the plugin."""
        try:
            return self.value(*args, **kwargs)
        except MMLLMError:
            raise
        except Exception as exc:
            raise PluginError(
                f"Plugin {self.plugin!r} failed to build the {self.label}: {type(exc).__name__}: {exc}"
            ) from exc

    @property
    def label(self) -> str:
        noun = KINDS[self.kind].noun
        return f"{noun} {self.name!r}" + (f" for modality {self.modality!r}" if self.modality else "")


class Registry:
    """Everything the loaded plugins register, collected through the same hooks for built-ins and third parties."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[tuple[str | None, str], Registration]] = {kind: {} for kind in KINDS}
        for kind in KINDS.values():
            plugins.call_register_hook(kind.hook, lambda plugin, kind=kind: self._callback(kind, plugin))
        self._check_modalities()
        self._check_signal_tokens()

    def _callback(self, kind: Kind, plugin: str) -> Callable[..., None]:
        def register(*args: Any) -> None:
            modality, name, value = self._unpack(kind, plugin, args)
            self._add(Registration(kind.name, name, modality, value, plugin))

        register.__doc__ = f"Register a {kind.noun} for plugin {plugin!r}."
        return register

    @staticmethod
    def _unpack(kind: Kind, plugin: str, args: tuple[Any, ...]) -> tuple[str | None, str, Any]:
        where = f"Plugin {plugin!r} called register() in {kind.hook}"
        if kind.name == "modalities":
            if len(args) != 1 or not isinstance(args[0], ModalitySpec):
                raise PluginError(f"{where} with {args!r}; it takes one ModalitySpec.")
            return None, args[0].name, args[0]
        if kind.name == "signal_tokens":
            if len(args) != 2 or not isinstance(args[0], str) or not isinstance(args[1], SignalVocabulary):
                raise PluginError(f"{where} with {args!r}; it takes (modality, SignalVocabulary).")
            if args[1].modality != args[0]:
                raise PluginError(
                    f"{where} for modality {args[0]!r} with a SignalVocabulary of modality {args[1].modality!r}; "
                    "the two must be the same."
                )
            return args[0], args[0], args[1]
        expected = 3 if kind.per_modality else 2
        if len(args) != expected or not all(isinstance(a, str) and a for a in args[:-1]):
            shape = "(modality, name, factory)" if kind.per_modality else "(name, factory)"
            raise PluginError(f"{where} with {args!r}; it takes {shape} with non-empty string names.")
        if kind.name != "recipes" and not callable(args[-1]) and not isinstance(args[-1], plugins.Lazy):
            raise PluginError(f"{where} for {args[-2]!r} with a factory that is not callable: {args[-1]!r}.")
        modality, value = (args[0] if kind.per_modality else None), args[-1]
        if kind.name == "exporters":
            if isinstance(value, Exporter) and not (callable(value.export) or isinstance(value.export, plugins.Lazy)):
                raise PluginError(f"{where} for {args[-2]!r} with an Exporter whose export is not callable.")
            value = value if isinstance(value, Exporter) else Exporter(value)
        if kind.name == "metrics" and not isinstance(value, Metric):
            value = Metric(value)  # a plain score(prediction, reference) function
        return modality, args[-2], value

    def _add(self, entry: Registration) -> None:
        key = (entry.modality, entry.name)
        existing = self._entries[entry.kind].get(key)
        if existing is not None:
            raise DuplicateComponentError(
                f"The {entry.label} is registered by both plugin {existing.plugin!r} and plugin {entry.plugin!r}. "
                "Uninstall one of them, or load only one with MMLLM_LOAD_PLUGINS."
            )
        self._entries[entry.kind][key] = entry

    def _check_modalities(self) -> None:
        known = {name for _, name in self._entries["modalities"]}
        for kind in ("encoders", "generators", "signal_tokens"):
            for entry in self._entries[kind].values():
                if entry.modality not in known:
                    raise PluginError(
                        f"Plugin {entry.plugin!r} registers {entry.label}, but no loaded plugin registers modality "
                        f"{entry.modality!r} (known: {', '.join(sorted(known))}). Install the plugin that defines it."
                    )

    def _check_signal_tokens(self) -> None:
        owners: dict[str, Registration] = {}
        for entry in self._entries["signal_tokens"].values():
            clash = owners.get(entry.value.prefix)
            if clash is not None:
                raise PluginError(
                    f"Signal tokens <{entry.value.prefix}_i> are claimed for modality {clash.modality!r} by plugin "
                    f"{clash.plugin!r} and for modality {entry.modality!r} by plugin {entry.plugin!r}; each "
                    "vocabulary needs its own prefix."
                )
            owners[entry.value.prefix] = entry

    def get(self, kind: str, name: str, modality: str | None = None, where: str = "") -> Registration:
        """The registration of ``name`` (for ``modality`` where the kind is per modality), or a helpful error."""
        entry = self._entries[kind].get((modality, name))
        if entry is not None:
            return entry
        candidates = sorted(n for (m, n) in self._entries[kind] if m == modality)
        near = difflib.get_close_matches(name, candidates, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        scope = f" for modality {modality!r}" if modality else ""
        prefix = f"{where}: " if where else ""
        raise UnknownComponentError(
            f"{prefix}{name!r} is not a registered {KINDS[kind].noun}{scope}.{hint} Registered: "
            f"{', '.join(candidates) or 'none'}. Run 'mmllm plugins' to see what each installed plugin provides."
        )

    def modality(self, name: str, where: str = "") -> ModalitySpec:
        return self.get("modalities", name, where=where).value

    def signal_vocabulary(self, modality: str, num_tokens: int | None = None, where: str = "") -> SignalVocabulary:
        """The signal tokens registered for ``modality``, with ``num_tokens`` (k, from the spec) when given."""
        entry = self._entries["signal_tokens"].get((modality, modality))
        if entry is None:
            prefix = f"{where}: " if where else ""
            raise UnknownComponentError(
                f"{prefix}no loaded plugin registers signal tokens for modality {modality!r}, so the LLM cannot be "
                f"taught to produce it; install the plugin that adds {modality!r} as an output, or register a "
                "SignalVocabulary with register_signal_tokens."
            )
        return entry.value if num_tokens is None else dataclasses.replace(entry.value, num_tokens=num_tokens)

    def entries(self, kind: str) -> list[Registration]:
        return list(self._entries[kind].values())


_cache: tuple[tuple[int, tuple[str, ...]], Registry] | None = None


def get_registry() -> Registry:
    """The registry for the plugins loaded now (rebuilt when plugins are registered or removed)."""
    global _cache
    key = plugins.registration_state()
    if _cache is None or _cache[0] != key:
        _cache = (key, Registry())
    return _cache[1]


def list_components() -> dict[str, list[dict[str, Any]]]:
    """Every registered component as plain data: ``{kind: [{name, modality, plugin}, ...]}``."""
    registry = get_registry()
    return {
        kind: [
            {"name": e.name, **({"modality": e.modality} if KINDS[kind].per_modality else {}), "plugin": e.plugin}
            for e in registry.entries(kind)
        ]
        for kind in KINDS
    }
