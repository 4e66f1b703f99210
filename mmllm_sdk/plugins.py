"""Loading plugins: the built-ins, then every ``mmllm`` entry point that MMLLM_LOAD_PLUGINS allows."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pluggy

import mmllm_sdk
from mmllm_sdk import hookspecs
from mmllm_sdk.errors import MMLLMError, PluginError

ENTRY_POINT_GROUP = "mmllm"
LOAD_ENV = "MMLLM_LOAD_PLUGINS"

DEFAULT_PLUGINS = (
    "mmllm_sdk.default_plugins.modalities",
    "mmllm_sdk.default_plugins.encoders",
    "mmllm_sdk.default_plugins.projectors",
    "mmllm_sdk.default_plugins.llms",
    "mmllm_sdk.default_plugins.output_projectors",
    "mmllm_sdk.default_plugins.generators",
    "mmllm_sdk.default_plugins.recipes",
    "mmllm_sdk.default_plugins.datasets",
    "mmllm_sdk.default_plugins.exporters",
    "mmllm_sdk.default_plugins.metrics",
    "mmllm_sdk.default_plugins.rewards",
    # the commands of `mmllm`, in the order `mmllm --help` lists them
    "mmllm_sdk.default_plugins.commands.inspection",  # plugins, validate
    "mmllm_sdk.default_plugins.commands.chat",  # chat
    "mmllm_sdk.default_plugins.commands.training",  # train, demo
    "mmllm_sdk.default_plugins.commands.new_plugin",  # new-plugin
    "mmllm_sdk.default_plugins.commands.export",  # export
    "mmllm_sdk.default_plugins.commands.evaluation",  # eval
    "mmllm_sdk.default_plugins.commands.serving",  # serve
)


@dataclass(frozen=True)
class Lazy:
    """A component named by ``"package.module:attribute"``, imported the first time it is used: ``mmllm plugins``
    (or any tool that only lists components) then does not import the module or the heavy libraries it needs."""

    path: str

    def __post_init__(self) -> None:
        module, sep, attribute = self.path.partition(":")
        if not (module and sep and attribute):
            raise PluginError(f"Lazy({self.path!r}) must name 'package.module:attribute'.")

    def resolve(self) -> Any:
        module, _, attribute = self.path.partition(":")
        try:
            return getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as exc:
            raise PluginError(f"Lazy({self.path!r}) cannot be imported: {type(exc).__name__}: {exc}.") from exc


@dataclass(frozen=True)
class PluginInfo:
    name: str
    distribution: str
    version: str
    builtin: bool


pm = pluggy.PluginManager("mmllm")
pm.add_hookspecs(hookspecs)
_infos: dict[str, PluginInfo] = {}
_changes = 0  # plugins registered or removed by hand: registries built before are stale
_loaded = False


def load_plugins() -> None:
    """Load the built-in plugins and the installed ones (once per process)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
        _infos[module_name] = PluginInfo(module_name, "mmllm-sdk", mmllm_sdk.__version__, builtin=True)
    value = os.environ.get(LOAD_ENV)
    allowed = None if value is None else {name.strip() for name in value.split(",") if name.strip()}
    found = set()
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(entry_point, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else entry_point.name
        if allowed is not None and entry_point.name not in allowed and dist_name not in allowed:
            continue
        found.update({entry_point.name, dist_name})
        if pm.has_plugin(entry_point.name):
            continue
        try:
            plugin = entry_point.load()
        except Exception as exc:
            raise PluginError(
                f"Plugin {entry_point.name!r} (distribution {dist_name!r}) failed to import: "
                f"{type(exc).__name__}: {exc}. Reinstall or upgrade it, or leave it out with "
                f"{LOAD_ENV}=<the plugins you want>."
            ) from exc
        _register(plugin, entry_point.name)
        version = dist.version if dist is not None else "unknown"
        _infos[entry_point.name] = PluginInfo(entry_point.name, dist_name, version, builtin=False)
    missing = sorted((allowed or set()) - found)
    if missing:
        warnings.warn(
            f"{LOAD_ENV} names {', '.join(missing)}, which no installed distribution provides "
            f"as an {ENTRY_POINT_GROUP!r} entry point; check the spelling or pip install it.",
            stacklevel=2,
        )


def _register(plugin: Any, name: str) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:  # e.g. a hook whose parameter is not named as in hookspecs
        raise PluginError(f"Plugin {name!r} does not fit the SDK's hooks: {exc}. See docs/hooks.md.") from exc


def register_plugin(plugin: Any, name: str, *, distribution: str = "", version: str = "") -> None:
    """Register a plugin object (module or instance) by hand, as tests and notebooks do."""
    global _changes
    load_plugins()
    if pm.has_plugin(name):
        raise PluginError(f"A plugin named {name!r} is already registered; unregister it first or pick another name.")
    already = pm.get_name(plugin)
    if already is not None:
        raise PluginError(f"This plugin object is already registered as {already!r}; unregister it first to rename it.")
    _register(plugin, name)
    _infos[name] = PluginInfo(name, distribution or name, version or "unknown", builtin=False)
    _changes += 1


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered with :func:`register_plugin` (or an installed one) from this process."""
    global _changes
    load_plugins()
    if not pm.has_plugin(name):
        raise PluginError(f"No plugin named {name!r} is registered; loaded plugins: {', '.join(plugin_names())}.")
    pm.unregister(name=name)
    _infos.pop(name, None)
    _changes += 1


def registration_state() -> tuple[int, tuple[str, ...]]:
    """Changes whenever the set of loaded plugin objects changes (also when a name is reused for another object)."""
    return _changes, tuple(plugin_names())


def plugin_names() -> list[str]:
    """Names of the loaded plugins, built-ins first."""
    load_plugins()
    return [name for name, _ in pm.list_name_plugin()]


def plugin_info(name: str) -> PluginInfo:
    load_plugins()
    return _infos.get(name) or PluginInfo(name, name, "unknown", builtin=False)


def call_register_hook(hook_name: str, make_callback: Callable[[str], Any]) -> None:
    """Call one ``register_*`` hook plugin by plugin, each with its own ``make_callback(plugin_name)`` (``register``,
    or ``cli``), so that what a plugin registers is attributed to it; an exception inside it, or a returned value
    (which would be silently lost), becomes a PluginError."""
    load_plugins()
    hook = getattr(pm.hook, hook_name)
    (argument,) = hook.spec.argnames
    for impl in hook.get_hookimpls():  # registration order: built-ins first, then installed plugins
        try:
            returned = impl.function(**{argument: make_callback(impl.plugin_name)})
        except MMLLMError:
            raise
        except Exception as exc:
            raise PluginError(
                f"Plugin {impl.plugin_name!r} raised {type(exc).__name__} in hook {hook_name}: {exc}. "
                f"Upgrade or fix the plugin, or leave it out with {LOAD_ENV}."
            ) from exc
        if returned is not None:
            call = "cli.command(...)" if argument == "cli" else f"{argument}(...) for each one"
            raise PluginError(
                f"Plugin {impl.plugin_name!r} returned a {type(returned).__name__} from hook {hook_name}, "
                f"which takes nothing back: call {call} instead of returning it."
            )
