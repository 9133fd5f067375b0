"""Name -> factory registry for every kind of component.

The registry is filled once, when the plugin manager is built: each plugin's
``lstmdet_register_<kind>`` hook receives a :class:`Registrar` bound to that plugin and kind, and
calls ``registrar.add(name, factory)``. Afterwards the registry is read-only in practice: code asks
it for a factory by ``(kind, name)`` and calls the factory with the options from a config.

Contract of the factories, per kind (see :mod:`lstmdet.hookspecs` for the full text):

* ``backbones``: ``factory(**options) -> nn.Module`` with ``feature_info``.
* ``encoders``: ``factory(in_channels, **options) -> nn.Module`` with ``out_channels``.
* ``heads``: ``factory(in_channels, num_classes, **options) -> nn.Module`` with ``task``.
* ``datasets``: ``factory(**options) -> torch.utils.data.Dataset``.

Names are unique per kind. Registering a name twice raises :class:`DuplicateComponentError`
naming both plugins; asking for a name nobody registered raises :class:`UnknownComponentError`
listing the names that are available.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from lstmdet.errors import (
    ConfigError,
    DuplicateComponentError,
    LstmdetError,
    UnknownComponentError,
    UnknownOptionError,
    did_you_mean,
)

KINDS: tuple[str, ...] = ("backbones", "encoders", "heads", "datasets")
SINGULAR = {"backbones": "backbone", "encoders": "encoder", "heads": "head", "datasets": "dataset"}
#: Positional arguments of the factory contracts (see the module docstring), not config options.
CONTRACT_ARGS: tuple[str, ...] = ("in_channels", "num_classes")
#: Keyword arguments that model assembly supplies to a factory that names them (not config options):
#: a head's ``feature_info``, the ``FeatureInfo(name, channels, stride)`` of each level it reads.
ASSEMBLY_ARGS: tuple[str, ...] = ("feature_info",)


@dataclass(frozen=True)
class Entry:
    """One registered component.

    Attributes:
        kind: One of :data:`KINDS`.
        name: Name used in configs and on the command line.
        factory: Callable that builds the component.
        plugin: Name of the plugin that registered it (its entry-point name).
    """

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str

    def options(self) -> list[str]:
        """Names of the keyword options the factory accepts (positional contract args excluded)."""
        return [option.name for option in self.option_details()]

    def option_details(self) -> list[Option]:
        """The options a config may set, from the factory's signature, in signature order.

        The contract arguments (``in_channels``, ``num_classes``) and what assembly supplies
        (:data:`ASSEMBLY_ARGS`) are left out; see :meth:`given_by_lstmdet`.
        """
        skip = {*CONTRACT_ARGS, "self", *ASSEMBLY_ARGS}
        return [
            Option(p.name, p.default is p.empty, None if p.default is p.empty else p.default, _annotation(p))
            for p in inspect.signature(self.factory).parameters.values()
            if p.name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def given_by_lstmdet(self) -> list[str]:
        """Parameters of the factory that lstmdet fills in itself (contract and assembly arguments)."""
        names = inspect.signature(self.factory).parameters
        return [name for name in (*CONTRACT_ARGS, *ASSEMBLY_ARGS) if name in names]

    @property
    def task(self) -> str | None:
        """``classify`` or ``detect`` for a head or dataset whose factory declares ``task``, else None."""
        task = getattr(self.factory, "task", None)
        return task if isinstance(task, str) else None

    def unknown_options(self, options: Iterable[str]) -> list[str]:
        """Those of ``options`` that the factory does not take (none when it takes ``**kwargs``)."""
        params = inspect.signature(self.factory).parameters.values()
        if any(p.kind == p.VAR_KEYWORD for p in params):
            return []
        accepted = {p.name for p in params if p.kind != p.VAR_POSITIONAL}
        return [name for name in options if name not in accepted]


@dataclass(frozen=True)
class Option:
    """One option of a component's factory.

    Attributes:
        name: The key in a config section.
        required: The factory has no default for it.
        default: Its default (None when required).
        annotation: The type as written in the signature (``""`` when unannotated).
    """

    name: str
    required: bool
    default: Any
    annotation: str


def _annotation(param: inspect.Parameter) -> str:
    if param.annotation is param.empty:
        return ""
    return param.annotation if isinstance(param.annotation, str) else inspect.formatannotation(param.annotation)


class Registrar:
    """What a plugin's hook receives: adds factories of one kind on behalf of one plugin.

    Args:
        registry: The registry being filled.
        kind: Kind of component this registrar adds.
        plugin: Name of the plugin whose hook holds this registrar.
    """

    def __init__(self, registry: ComponentRegistry, kind: str, plugin: str) -> None:
        self._registry = registry
        self.kind = kind
        self.plugin = plugin

    def add(self, name: str, factory: Callable[..., Any]) -> None:
        """Register ``factory`` under ``name``.

        Args:
            name: Name used in configs; lower case letters, digits and ``_`` are recommended.
            factory: Callable returning the component (see the module docstring for its contract).

        Raises:
            DuplicateComponentError: Another plugin (or this one) already registered ``name``.
            LstmdetError: ``name`` is not a non-empty string or ``factory`` is not callable.
        """
        self._registry.add(self.kind, name, factory, self.plugin)


class ComponentRegistry:
    """All registered components, by kind and name."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}

    def add(self, kind: str, name: str, factory: Callable[..., Any], plugin: str) -> None:
        """Register a factory; see :meth:`Registrar.add`."""
        self._check_kind(kind)
        if not isinstance(name, str) or not name:
            raise LstmdetError(f"plugin {plugin!r} registered a {SINGULAR[kind]} with an invalid name {name!r}")
        if not callable(factory):
            raise LstmdetError(f"plugin {plugin!r} registered {SINGULAR[kind]} {name!r} with a non-callable factory")
        existing = self._entries[kind].get(name)
        if existing is not None:
            raise DuplicateComponentError(
                f"{SINGULAR[kind]} {name!r} is registered twice: by plugin {existing.plugin!r} and by plugin "
                f"{plugin!r}; rename one of them or disable a plugin with LSTMDET_DISABLE_PLUGINS"
            )
        self._entries[kind][name] = Entry(kind, name, factory, plugin)

    def get(self, kind: str, name: str) -> Entry:
        """Return the entry for ``name``.

        Raises:
            UnknownComponentError: No plugin registered ``name`` for ``kind``.
        """
        self._check_kind(kind)
        try:
            return self._entries[kind][name]
        except KeyError:
            available = ", ".join(sorted(self._entries[kind])) or "(none)"
            hint = did_you_mean(name, self._entries[kind]) if isinstance(name, str) else ""
            raise UnknownComponentError(
                f"unknown {SINGULAR[kind]} {name!r}{hint}; available {kind}: {available}. "
                f"If {name!r} comes from a plugin, that plugin may not be installed or may be disabled "
                "by LSTMDET_DISABLE_PLUGINS"
            ) from None

    def names(self, kind: str) -> list[str]:
        """Sorted names registered for ``kind``."""
        self._check_kind(kind)
        return sorted(self._entries[kind])

    def entries(self) -> list[Entry]:
        """Every entry, ordered by kind then name."""
        return [self._entries[kind][name] for kind in KINDS for name in sorted(self._entries[kind])]

    def create(self, kind: str, name: str, *args: Any, **options: Any) -> Any:
        """Build component ``name`` of ``kind`` with positional contract args and options.

        Raises:
            UnknownComponentError: ``name`` is not registered.
            LstmdetError: The factory does not accept one of ``options``; the message lists the
                options it does accept.
        """
        entry = self.get(kind, name)
        accepted = ", ".join(entry.options()) or "(none)"
        unknown = entry.unknown_options(options)
        if unknown:
            raise UnknownOptionError(
                unknown[0],
                f"{SINGULAR[kind]} {name!r} has no option {unknown[0]!r}{did_you_mean(unknown[0], entry.options())}; "
                f"accepted options: {accepted}",
            )
        try:
            inspect.signature(entry.factory).bind(*args, **options)
        except TypeError as exc:
            raise LstmdetError(f"{SINGULAR[kind]} {name!r}: {exc}; accepted options: {accepted}") from None
        return entry.factory(*args, **options)

    def create_from_spec(
        self,
        kind: str,
        spec: dict[str, Any],
        field: str,
        *args: Any,
        skip: tuple[str, ...] = (),
        context: dict[str, Any] | None = None,
    ) -> Any:
        """Build the component a config section names: ``{name: ..., **options}``.

        Args:
            kind: Component kind.
            spec: The config section; ``name`` picks the component, the other keys are its options.
            field: Dotted config path of the section, used in error messages.
            *args: Contract arguments of the kind (e.g. ``in_channels``).
            skip: Keys of ``spec`` that are not component options (read by the caller).
            context: Keyword arguments that assembly supplies (e.g. a head's ``feature_info``), each
                passed only to a factory that names it as a parameter; a config may not set them.

        Raises:
            ConfigError: Unknown name (field ``<field>.name``), an option the factory does not take,
                or a value the component rejects with ``ValueError`` (field ``<field>``).
        """
        options = {k: v for k, v in spec.items() if k != "name" and k not in skip}
        for key in context or {}:
            if key in options:
                raise ConfigError(f"{field}.{key}", "is set by model assembly, not by the config; remove it")
        try:
            if context:
                params = inspect.signature(self.get(kind, spec["name"]).factory).parameters
                options.update({k: v for k, v in context.items() if k in params})
            return self.create(kind, spec["name"], *args, **options)
        except UnknownComponentError as exc:
            raise ConfigError(f"{field}.name", str(exc)) from None
        except UnknownOptionError as exc:
            raise ConfigError(f"{field}.{exc.option}", str(exc)) from None
        except ValueError as exc:
            raise ConfigError(field, f"{spec['name']}: {exc}") from None
        except LstmdetError as exc:
            raise ConfigError(field, str(exc)) from None

    @staticmethod
    def _check_kind(kind: str) -> None:
        if kind not in KINDS:
            raise LstmdetError(f"unknown component kind {kind!r}; kinds are: {', '.join(KINDS)}")
