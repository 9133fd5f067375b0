"""Builds the pluggy plugin manager and the component registry from it.

Nothing here is a module-level singleton: :func:`build_plugin_manager` makes a new manager each
time. :func:`current_registry` memoises the registry for the current environment (the value of
``LSTMDET_DISABLE_PLUGINS`` and ``sys.path``), so installing a plugin or changing the block list
in a running process takes effect on the next call.

Plugins come only from the ``lstmdet`` entry-point group. The built-in plugins are declared there
by lstmdet's own ``pyproject.toml`` (:data:`DEFAULT_PLUGINS` lists their entry-point names), so they
go through the same path as third-party ones and can be disabled the same way.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Iterable
from importlib.metadata import entry_points

import pluggy

from lstmdet import hookspecs
from lstmdet.errors import LstmdetError, did_you_mean
from lstmdet.registry import KINDS, ComponentRegistry, Registrar

ENTRY_POINT_GROUP = "lstmdet"
DISABLE_ENV = "LSTMDET_DISABLE_PLUGINS"

#: Entry-point names of the built-in plugins (declared in pyproject.toml).
DEFAULT_PLUGINS: tuple[str, ...] = (
    "backbones_torchvision",
    "backbones_small",
    "encoders_lstm",
    "encoders_convlstm",
    "heads_classifier",
    "heads_detection",
    "datasets_classification",
    "datasets_detection",
    "datasets_digits",
)


def disabled_from_env(environ: dict[str, str] | None = None) -> list[str]:
    """Plugin names listed in ``LSTMDET_DISABLE_PLUGINS`` (comma-separated, blanks ignored)."""
    value = (os.environ if environ is None else environ).get(DISABLE_ENV, "")
    return [name.strip() for name in value.split(",") if name.strip()]


def build_plugin_manager(
    disabled: Iterable[str] | None = None, extra_plugins: Iterable[tuple[str, object]] = ()
) -> pluggy.PluginManager:
    """Create a plugin manager with lstmdet's hook specs and every installed plugin.

    Args:
        disabled: Plugin names to block; ``None`` reads ``LSTMDET_DISABLE_PLUGINS``.
        extra_plugins: ``(name, plugin)`` pairs registered directly (for tests and embedding).

    Returns:
        A manager whose registered plugins are the entry points of group ``lstmdet`` that are
        not blocked, plus ``extra_plugins``.

    Raises:
        LstmdetError: lstmdet's own built-in plugins are missing although none was disabled
            (lstmdet is imported from a source tree that was never installed), a plugin
            implements a hook that lstmdet does not define (a misspelt name), or a name to block
            matches no installed plugin (a misspelt name would otherwise block nothing, silently).
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    blocked = disabled_from_env() if disabled is None else list(disabled)
    extra_plugins = list(extra_plugins)
    _check_blocked(  # before any plugin is imported: a misspelt name fails fast
        blocked, [*(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)), *(n for n, _ in extra_plugins)]
    )
    for name in blocked:
        pm.set_blocked(name)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for name, plugin in extra_plugins:
        pm.register(plugin, name=name)
    _check_hooks(pm)
    missing = [n for n in DEFAULT_PLUGINS if pm.get_plugin(n) is None and not pm.is_blocked(n)]
    if missing:
        raise LstmdetError(
            f"lstmdet's built-in plugins {missing} were not found in the {ENTRY_POINT_GROUP!r} entry-point "
            "group: install lstmdet (`pip install -e .` in the source tree) instead of importing it from a path"
        )
    return pm


def _check_blocked(blocked: list[str], installed: list[str]) -> None:
    """Refuse a name to block that matches no installed plugin, naming it and listing the plugins."""
    unknown = [name for name in blocked if name not in installed]
    if unknown:
        name = unknown[0]
        raise LstmdetError(
            f"{DISABLE_ENV} names {name!r}, which is not an installed plugin{did_you_mean(name, installed)}; "
            f"plugins: {', '.join(sorted(set(installed)))} (see `lstmdet plugins`)"
        )


def _check_hooks(pm: pluggy.PluginManager) -> None:
    """pluggy's ``check_pending()``, with a message that names the plugin, the hook and the likely fix.

    Without it a misspelt hook (``lstmdet_register_encoder``) is silently never called.
    """
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        known = sorted(n for n in dir(hookspecs) if n.startswith(f"{hookspecs.PROJECT_NAME}_"))
        unknown = [
            (name, impl.plugin_name)
            for name, caller in vars(pm.hook).items()
            if not name.startswith("_") and not caller.has_spec()
            for impl in caller.get_hookimpls()
            if not impl.optionalhook
        ]
        if not unknown:  # pluggy found a problem this summary does not know: pass its words on
            raise LstmdetError(f"a plugin does not match lstmdet's hooks: {exc}") from None
        name, plugin = unknown[0]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise LstmdetError(
            f"plugin {plugin!r} implements hook {name!r}, which lstmdet does not define, so it would never be "
            f"called; {hint}lstmdet's hooks are {', '.join(known)} (block the plugin with {DISABLE_ENV}={plugin})"
        ) from None


def build_registry(pm: pluggy.PluginManager) -> ComponentRegistry:
    """Call every plugin's registration hooks, each with a registrar bound to that plugin."""
    registry = ComponentRegistry()
    for kind in KINDS:
        caller = getattr(pm.hook, f"lstmdet_register_{kind}")
        # Hook implementations are called one by one (not through the hook caller) so that each
        # receives a registrar that knows which plugin it is registering for.
        for impl in reversed(caller.get_hookimpls()):
            impl.function(registry=Registrar(registry, kind, impl.plugin_name))
    return registry


_cache: dict[tuple, tuple[pluggy.PluginManager, ComponentRegistry]] = {}


def _environment_key() -> tuple:
    return (tuple(disabled_from_env()), tuple(sys.path))


def current_plugin_manager() -> pluggy.PluginManager:
    """The plugin manager for the current environment (built on first use, then reused)."""
    return _current()[0]


def current_registry() -> ComponentRegistry:
    """The component registry for the current environment (built on first use, then reused)."""
    return _current()[1]


def _current() -> tuple[pluggy.PluginManager, ComponentRegistry]:
    key = _environment_key()
    if key not in _cache:
        _cache.clear()
        pm = build_plugin_manager()
        _cache[key] = (pm, build_registry(pm))
    return _cache[key]


def plugin_distributions(pm: pluggy.PluginManager) -> dict[str, str]:
    """Map plugin name -> ``"distribution version"`` for plugins loaded from entry points."""
    found: dict[str, str] = {}
    for plugin, dist in pm.list_plugin_distinfo():
        name = pm.get_name(plugin)
        if name is not None:
            found[name] = f"{dist.metadata['name']} {dist.version}"
    return found
