"""Hook specifications: the only ways a plugin can extend lstmdet.

A plugin is a module (or object) with functions marked by :data:`lstmdet.hookimpl`. It is found
through the ``lstmdet`` entry-point group, exactly like the built-in plugins in ``lstmdet.plugins``.
Each hook is called once per plugin when the plugin manager is built (see
:func:`lstmdet.manager.build_plugin_manager`), with a :class:`~lstmdet.registry.Registrar` bound to
that plugin. A hook implementation may only call ``registry.add(name, factory)``; it must not build
models, import heavy optional dependencies eagerly, or touch the file system, because it runs every
time lstmdet starts (including in every worker process).

Example::

    from lstmdet import hookimpl

    @hookimpl
    def lstmdet_register_encoders(registry):
        registry.add("my_gru", MyGRUSweep)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from lstmdet.registry import Registrar

PROJECT_NAME = "lstmdet"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def lstmdet_register_backbones(registry: Registrar) -> None:
    """Register backbone factories.

    Called once per plugin while the registry is built. Each factory is called as
    ``factory(**options)`` and must return an ``nn.Module`` with a ``feature_info`` attribute
    (a list of :class:`lstmdet.FeatureInfo`) whose ``forward`` maps images ``(B, 3, H, W)`` to an
    ordered ``dict`` of feature maps ``{name: (B, C, ceil(H/stride), ceil(W/stride))}``, one entry per
    ``feature_info`` item, in the same order.

    Args:
        registry: Registrar bound to the calling plugin; call ``registry.add(name, factory)``.
    """


@hookspec
def lstmdet_register_encoders(registry: Registrar) -> None:
    """Register sequence-encoder factories.

    Called once per plugin while the registry is built. Each factory is called as
    ``factory(in_channels, **options)`` and must return an ``nn.Module`` with an ``out_channels``
    attribute whose ``forward(x, state=None)`` maps ``x`` of shape ``(B, T, C, H, W)`` to
    ``(y, state)`` with ``y`` of shape ``(B, T, out_channels, H, W)``. ``state`` is whatever the
    encoder needs to continue a sequence (``None`` for encoders without memory across frames).
    Optional attributes: ``stateful`` (bool) and ``flops(shape) -> int`` (analytic FLOPs for an
    input of ``shape``; used where PyTorch's FLOP counter cannot see inside fused kernels).

    Args:
        registry: Registrar bound to the calling plugin; call ``registry.add(name, factory)``.
    """


@hookspec
def lstmdet_register_heads(registry: Registrar) -> None:
    """Register head factories.

    Called once per plugin while the registry is built. Each factory is called as
    ``factory(in_channels, num_classes, **options)`` and must return an ``nn.Module`` with a
    ``task`` attribute (``"classify"`` or ``"detect"``) that follows :class:`lstmdet.interfaces.Head`.
    A factory with a ``feature_info`` parameter also receives, from model assembly, the
    ``FeatureInfo(name, channels, stride)`` of each level the head reads, in the order of the
    ``features`` it will get (as detectron2 passes ``ShapeSpec``s), so it never guesses strides;
    a config cannot set it.

    Args:
        registry: Registrar bound to the calling plugin; call ``registry.add(name, factory)``.
    """


@hookspec
def lstmdet_register_datasets(registry: Registrar) -> None:
    """Register dataset factories.

    Called once per plugin while the registry is built. Each factory is called as
    ``factory(**options)`` and returns a map-style ``torch.utils.data.Dataset`` with a ``classes``
    attribute (list of class names, index = label) and a ``task`` attribute (``"classify"`` or
    ``"detect"``). Items are ``(image, target)`` pairs in the form augmentation libraries take:

    * ``image``: ``(H, W, 3)`` uint8 RGB ``numpy`` array; a clip is ``(T, H, W, 3)``.
    * ``target`` for classification: ``{"label": int}``.
    * ``target`` for detection: ``{"boxes": (N, 4) float32 xyxy pixels, "labels": (N,) int64}``,
      optionally ``"file"`` (source path); for a clip, ``{"frames": [one such dict per frame]}``
      and each frame dict may carry ``"track_ids"``.

    The engine turns items into tensors after augmentation; datasets never normalise.

    Args:
        registry: Registrar bound to the calling plugin; call ``registry.add(name, factory)``.
    """
