"""Writing ONNX and TorchScript files from a model (behind :func:`lstmdet.export.export`).

Exporter choice. ONNX files are made with PyTorch's TorchScript-based exporter
(``torch.onnx.export(..., dynamo=False)``): it traces ``nn.LSTM`` into ONNX ``LSTM`` ops with a
dynamic batch (``torch.export``/dynamo freezes the sequence length of bidirectional LSTMs and fails on
torchvision's detectors in several PyTorch issues), and it honours the ``symbolic`` of
:class:`~lstmdet.export.graph._OnnxNMS`, which puts NMS into the graph as ``NonMaxSuppression``. A
torch without that exporter gets an :class:`~lstmdet.errors.ExportError` saying so. TorchScript files
are ``torch.jit.trace`` of the network with a ``torch.jit.script``-compiled post-processing
(data-dependent NMS loops survive), loadable by ``torch.jit.load`` alone.

A part that cannot be traced faithfully is named: a ``TracerWarning`` raised from a component's own
source (a tensor turned into a Python value freezes it in the graph) or an exception whose
traceback passes through it; failing that, each part is exported on its own to find the one that fails.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import json
import os
import sys
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lstmdet.errors import ExportError
from lstmdet.export import contract
from lstmdet.export.checks import check_onnx, onnx_runner, other_size, size_mismatch
from lstmdet.export.graph import (
    DetectionPostprocess,
    ExportModule,
    ExportNet,
    OnnxDetectionPostprocess,
    TorchScriptEntry,
)

#: Opsets the TorchScript-based exporter can write and ONNX Runtime runs (NonMaxSuppression, ScatterElements).
MIN_OPSET, DEFAULT_OPSET = 11, 17
FORMATS: tuple[str, ...] = ("onnx", "torchscript")


def _legacy() -> dict[str, Any]:
    """Keyword arguments that select the TorchScript-based exporter (torch < 2.5 has only that one)."""
    return {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def _has_torchscript_exporter() -> bool:
    """Whether this torch still has the TorchScript-based ONNX exporter."""
    import importlib.util

    if "dynamo" not in inspect.signature(torch.onnx.export).parameters or hasattr(torch.onnx, "utils"):
        return True
    return importlib.util.find_spec("torch.onnx._internal.torchscript_exporter") is not None


def max_opset() -> int:
    """Highest opset this torch's TorchScript-based exporter writes."""
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", DEFAULT_OPSET))


class Parts:
    """The parts of a model with the words that name them in errors and the files that define them."""

    def __init__(self, model: nn.Module) -> None:
        from lstmdet.manager import current_registry

        spec = model.config["model"]
        registry = current_registry()

        def describe(kind: str, section: str) -> str:
            name = spec[section]["name"]
            try:
                plugin = registry.get(kind, name).plugin
            except Exception:  # (a model built from another registry)
                return f"{section} {name!r}"
            return f"{section} {name!r} (plugin {plugin!r})"

        self.items: list[tuple[str, nn.Module]] = [(describe("backbones", "backbone"), model.backbone)]
        if model.neck is not None:
            self.items.append(("neck (torchvision FeaturePyramidNetwork)", model.neck))
        for level, encoder in model.encoders.items():
            self.items.append((f"{describe('encoders', 'encoder')} on level {level!r}", encoder))
        self.items.append((describe("heads", "head"), model.head))

    def files(self) -> dict[str, str]:
        """``{source file: part}`` for the classes of every part and its submodules outside torch."""
        skip = (Path(torch.__file__).parent, Path(__import__("torchvision").__file__).parent)
        found: dict[str, str] = {}
        for words, module in self.items:
            for sub in module.modules():
                try:
                    path = Path(inspect.getsourcefile(type(sub)) or "").resolve()
                except TypeError:
                    continue
                if path.name and not any(root in path.parents for root in skip):
                    found.setdefault(str(path), words)
        return found

    def suspects(self, caught: list[warnings.WarningMessage]) -> list[tuple[str, nn.Module, str]]:
        """``(part, module, where)`` of parts whose own code raised a ``TracerWarning`` while tracing.

        Such a part turned a tensor into a Python value. Shape checks raise the same warning harmlessly;
        :func:`check_frozen` tells the two apart.
        """
        files = self.files()
        modules = dict(self.items)
        found: dict[str, str] = {}
        for w in caught:
            if not issubclass(w.category, torch.jit.TracerWarning):
                continue
            part = files.get(str(Path(w.filename).resolve()))
            if part is not None and part not in found:
                message = str(w.message).split(". ")[0]
                found[part] = f"at {Path(w.filename).name}:{w.lineno} ({message})"
        return [(part, modules[part], where) for part, where in found.items()]

    def blame_exception(self, exc: BaseException, run_part: Any) -> ExportError:
        """An error naming the part an export exception comes from.

        Args:
            exc: What the exporter raised.
            run_part: ``run_part(module)`` exports one part alone and raises if that fails.
        """
        files = self.files()
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:400]
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            part = files.get(str(Path(frame.filename).resolve()))
            if part is not None:
                return ExportError(
                    f"{part} cannot be exported: tracing failed at {Path(frame.filename).name}:{frame.lineno} "
                    f"({reason}); export a model without this part"
                )
        for words, module in self.items:
            try:
                run_part(module)
            except Exception as part_exc:  # (any failure names the part)
                first = str(part_exc).strip().splitlines()[0] if str(part_exc).strip() else ""
                return ExportError(f"{words} cannot be exported: {type(part_exc).__name__}: {first[:400]}")
        return ExportError(f"the model cannot be exported ({reason})")


def check_frozen(
    net: ExportNet, inputs: list[Tensor], suspects: list[tuple[str, nn.Module, str]], batch: int | None
) -> None:
    """Raise when a suspect part made the trace depend on the example input's values.

    The network is traced again and run on another input (another batch size when it is dynamic);
    outputs that differ from PyTorch's mean a Python value was frozen into the graph. Each suspect is
    then traced alone on the input it got, to name the guilty ones (all suspects when that cannot tell).

    Raises:
        ExportError: Naming the guilty parts, where they turn tensors into Python values, and what to do.
    """
    if not suspects:
        return
    generator = torch.Generator().manual_seed(1)
    n = inputs[0].shape[0] if batch is not None else 3
    other = [torch.rand(n, *x.shape[1:], generator=generator) * (0.5 if i else 1.0) for i, x in enumerate(inputs)]
    if not _frozen(net, inputs, other):
        return
    guilty = [(part, where) for part, module, where in suspects if _frozen_part(net, module, inputs, other)]
    named = "; ".join(f"{part} {where}" for part, where in guilty or [(p, w) for p, _, w in suspects])
    raise ExportError(
        f"cannot export: {named}: there its forward turns a tensor into a Python value, and the traced graph "
        "gives other outputs than PyTorch on another input, so the file would keep the example input's value for "
        "every input; write that step with tensor operations (e.g. torch.where instead of if, no .item()), or export "
        "a model without this part"
    )


def _frozen(module: nn.Module, example: list[Tensor] | tuple, other: list[Tensor] | tuple) -> bool:
    """Whether ``module`` traced on ``example`` gives other outputs than eager PyTorch on ``other``."""
    flat = _Flat(module)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        want = flat(*other)
        try:
            got = torch.jit.trace(flat, tuple(example), check_trace=False, strict=False)(*other)
            return not all(torch.allclose(a, b, rtol=1e-3, atol=1e-4) for a, b in zip(got, want, strict=True))
        except Exception:  # (a graph that cannot even run on the other input)
            return True


def _frozen_part(net: ExportNet, part: nn.Module, example: list[Tensor], other: list[Tensor]) -> bool:
    """Whether one part, traced alone on what it gets from ``example``, differs from PyTorch on ``other``'s."""
    seen: list[tuple] = []
    hook = part.register_forward_pre_hook(lambda module, args: seen.append(args))
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            net(*example)
            net(*other)
    finally:
        hook.remove()
    if len(seen) != 2:  # not called through forward (e.g. a stateful encoder's export_step): cannot tell
        return False
    return _frozen(part, seen[0], seen[1])


@contextlib.contextmanager
def _tracing_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Record every warning raised inside (they are examined, not shown)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


@contextlib.contextmanager
def _silent_stdout() -> Iterator[None]:
    """Send the process's standard output (file descriptor 1) to /dev/null inside.

    torch's exporter prints its whole IR graph there from C++ when a conversion fails; the error that
    lstmdet raises says what failed instead.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def quiet_torch_jit() -> Iterator[None]:
    """Hide torch's deprecation notices for ``torch.jit`` (the TorchScript format is what the user asked for)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


#: Name of the optional ONNX input giving each image's height and width inside the batch (detectors).
IMAGE_SIZES = contract.IMAGE_SIZES


def _example_inputs(
    net: ExportNet, batch: int, image_size: tuple[int, int], sizes_input: bool
) -> tuple[list[Tensor], list[dict]]:
    """Example ``images`` (``image_sizes``) and zero state for tracing, and the state's metadata entries."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, *image_size, generator=generator)
    inputs, state = [images], []
    if sizes_input:
        inputs.append(torch.tensor([list(image_size)] * batch, dtype=torch.int64))
    if net.state_layout:
        shapes = _level_shapes(net, images)
        strides = {info.name: int(info.stride) for info in net.model.backbone.feature_info}
        for level, _count in net.state_layout:
            encoder = net.model.encoders[level]
            _, height, width = shapes[level]
            for layer in range(int(encoder.num_layers)):
                for name_in, name_out in contract.state_names(level, layer):
                    inputs.append(torch.zeros(batch, int(encoder.hidden), height, width))
                    state.append({"input": name_in, "output": name_out, "shape": [None, encoder.hidden, height, width],
                                  "stride": strides[level]})  # fmt: skip
    return inputs, state


def _level_shapes(net: ExportNet, images: Tensor) -> dict[str, tuple[int, int, int]]:
    """``{level: (C, h, w)}`` of the backbone (and neck) for ``images``."""
    with torch.no_grad():
        feats = net.model.backbone(net.pad(images).to(next(net.model.parameters()).dtype))
        if net.model.neck is not None:
            feats = net.model.neck(dict(feats))
    return {level: tuple(f.shape[1:]) for level, f in feats.items()}


def _postprocess(net: ExportNet, onnx: bool) -> nn.Module | None:
    """The detection post-processing for the model's head (``None`` for classifiers).

    Raises:
        ExportError: A head lstmdet does not know how to post-process in a graph.
    """
    from lstmdet.plugins.heads_detection import FCOSDetectionHead, RetinaNetDetectionHead

    model = net.model
    name = model.config["model"]["head"]["name"]
    if not net.detect:
        if not callable(getattr(model.head, "logits", None)):
            raise ExportError(
                f"head {name!r} cannot be exported: export needs a classify head with a logits(features) method "
                "returning (N, num_classes), as the built-in classifier has"
            )
        return None
    if not isinstance(model.head, (FCOSDetectionHead, RetinaNetDetectionHead)):
        raise ExportError(
            f"head {name!r} cannot be exported: lstmdet puts the box decoding and NMS of the built-in fcos and "
            "retinanet heads into the graph and knows no other detection head's post-processing"
        )
    return (OnnxDetectionPostprocess if onnx else DetectionPostprocess)(model.head)


class Prepared:
    """What is traced: the module, its example inputs, input and output names, state entries, post settings.

    Args:
        model: The model to export.
        half: Float16 weights and compute.
        batch: Fixed batch size, or ``None`` for a dynamic one.
        onnx: For an ONNX file (NMS as ``NonMaxSuppression``); else TorchScript (NMS scripted).
    """

    def __init__(self, model: nn.Module, *, half: bool, batch: int | None, onnx: bool) -> None:
        model = copy.deepcopy(model).eval()
        for param in model.parameters():
            param.requires_grad_(False)
        if half:
            model = model.half()
        net = ExportNet(model, half=half).eval()
        self.detect = net.detect
        self.image_size = contract.input_size(model.config)
        sizes_input = net.detect
        self.inputs, self.state = _example_inputs(net, batch or 2, self.image_size, sizes_input)
        post = _postprocess(net, onnx)
        self.settings = post.settings() if isinstance(post, DetectionPostprocess) else None
        if post is not None and not onnx:
            with quiet_torch_jit():
                post = torch.jit.script(post)
        outputs = list(contract.DETECT_OUTPUTS if net.detect else contract.CLASSIFY_OUTPUTS)
        self.module = ExportModule(net, post, sizes_input=sizes_input).eval()
        sizes = [IMAGE_SIZES] if sizes_input else []
        self.input_names = [contract.IMAGES, *sizes, *(s["input"] for s in self.state)]
        self.output_names = outputs + [s["output"] for s in self.state]

    def dynamic_axes(self, batch: int | None, size: bool) -> dict[str, dict[int, str]] | None:
        """ONNX ``dynamic_axes``: ``N`` unless the batch is fixed; ``H, W`` (and state ``h, w``) when ``size``."""
        names = self.input_names + self.output_names
        axes: dict[str, dict[int, str]] = {name: {} for name in names}
        if batch is None:
            for name in names:
                axes[name][0] = "N"
        if IMAGE_SIZES in axes:
            axes[IMAGE_SIZES] = {0: "N_sizes"}  # (N, 2) or (1, 2): one size for the whole batch
        if size:
            axes[contract.IMAGES].update({2: "H", 3: "W"})
            for entry in self.state:
                for name in (entry["input"], entry["output"]):
                    axes[name].update({2: f"h_{entry['stride']}", 3: f"w_{entry['stride']}"})
        axes = {name: dims for name, dims in axes.items() if dims}
        return axes or None


def export_onnx(
    model: nn.Module, out: Path, *, opset: int | None, batch: int | None, half: bool, check: bool = True
) -> Path:
    """Write ``model`` as one self-contained ONNX file (see :mod:`lstmdet.export.contract`).

    Raises:
        ExportError: A part cannot be exported (named), a bad opset, or no TorchScript-based exporter.
    """
    try:
        import onnx
    except ImportError:
        raise ExportError(
            "ONNX export needs the onnx package, which is not installed; pip install 'lstmdet[export]'"
        ) from None

    opset = DEFAULT_OPSET if opset is None else opset
    if not MIN_OPSET <= opset <= max_opset():
        raise ExportError(f"opset {opset} is not supported; choose one in [{MIN_OPSET}, {max_opset()}] (default 17)")
    if not _has_torchscript_exporter():
        raise ExportError(
            f"torch {torch.__version__} has no TorchScript-based ONNX exporter (torch.onnx.export(dynamo=False)), "
            "which lstmdet needs for LSTMs and in-graph NMS; export with torch <= 2.14 or use --format torchscript"
        )
    prepared = Prepared(model, half=half, batch=batch, onnx=True)
    parts = Parts(prepared.module.net.model)
    fixed_reason = None if prepared.detect else "a classifier resizes every image to model.input.size"
    data = _trace_onnx(prepared, parts, opset, batch, size=fixed_reason is None)
    if fixed_reason is None:
        fixed_reason = size_mismatch(onnx_runner(data, prepared.input_names), prepared, batch)
        if fixed_reason is not None:
            data = _trace_onnx(prepared, parts, opset, batch, size=False)
    proto = onnx.load_from_string(data)
    if prepared.settings is not None:  # K = detections_per_img is fixed (shape inference may not see it)
        for output in proto.graph.output:
            if output.name in contract.DETECT_OUTPUTS[:3]:
                output.type.tensor_type.shape.dim[1].dim_value = int(prepared.settings["detections_per_img"])
    if batch is not None:
        for output in proto.graph.output:
            output.type.tensor_type.shape.dim[0].dim_value = batch
    if prepared.module.sizes_input:  # image_sizes gets a default value: optional, boxes clipped to the batch's H, W
        default = onnx.numpy_helper.from_array(np.full((1, 2), 2**31 - 1, dtype=np.int64), IMAGE_SIZES)
        proto.graph.initializer.append(default)
    how = f"torch {torch.__version__} torch.onnx TorchScript-based exporter (dynamo=False), opset {opset}"
    meta = contract.metadata(
        config=model.config, classes=list(model.classes), outputs=prepared.output_names, state=prepared.state,
        postprocess=prepared.settings, batch=batch, half=half, exporter=how, fixed_size=fixed_reason,
        stride=prepared.module.net.stride, sizes_input=prepared.module.sizes_input,
    )  # fmt: skip
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))
    if check:
        check_onnx(out, prepared, batch, None if fixed_reason else other_size(prepared.image_size))
    return out


def _trace_onnx(prepared: Prepared, parts: Parts, opset: int, batch: int | None, size: bool) -> bytes:
    """The ONNX graph of ``prepared`` as bytes (``H, W`` dynamic when ``size``), after the frozen-value check.

    Raises:
        ExportError: A part cannot be exported, or freezes a value of the example input (named).
    """
    module, inputs = prepared.module, prepared.inputs
    buffer = io.BytesIO()
    with _tracing_warnings() as caught:
        try:
            with torch.no_grad(), _silent_stdout():
                torch.onnx.export(
                    module, tuple(inputs), buffer, **_legacy(), opset_version=opset,
                    input_names=prepared.input_names, output_names=prepared.output_names,
                    dynamic_axes=prepared.dynamic_axes(batch, size), do_constant_folding=True,
                )  # fmt: skip
        except ExportError:
            raise
        except Exception as exc:  # (named below)
            raise parts.blame_exception(exc, _part_exporter(module, inputs, opset)) from exc
    check_frozen(module.net, _net_inputs(prepared), parts.suspects(caught), batch)
    return buffer.getvalue()


def _net_inputs(prepared: Prepared) -> list[Tensor]:
    """The example inputs of the network part (``images`` and the state: not ``image_sizes``)."""
    return [x for name, x in zip(prepared.input_names, prepared.inputs, strict=True) if name != IMAGE_SIZES]


def _part_exporter(module: ExportModule, inputs: list[Tensor], opset: int) -> Any:
    """``run_part(part)``: export that part alone, with the inputs it gets in the whole model."""
    captured: dict[int, tuple] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args: captured.setdefault(id(mod), args))
        for m in module.net.model.modules()
    ]
    try:
        with torch.no_grad():
            module(*inputs)
    except Exception:  # (parts after the failing one are just not captured)
        pass
    finally:
        for hook in hooks:
            hook.remove()

    def run_part(part: nn.Module) -> None:
        target = part.head if hasattr(part, "head") and id(part.head) in captured else part
        if id(target) not in captured:
            return
        args = captured[id(target)]
        if args and isinstance(args[-1], dict):
            args = (*args, {})  # torch.onnx.export would take a trailing dict for keyword arguments
        with warnings.catch_warnings(), torch.no_grad(), _silent_stdout():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Flat(target), args, io.BytesIO(), **_legacy(), opset_version=opset)

    return run_part


class _Flat(nn.Module):
    """A module whose outputs (dicts, lists, tuples) come out as a flat tuple of tensors (None dropped)."""

    def __init__(self, part: nn.Module) -> None:
        super().__init__()
        self.part = part

    def forward(self, *args: Any) -> tuple[Tensor, ...]:
        out = self.part(*args)
        flat: list[Tensor] = []
        stack = [out]
        while stack:
            item = stack.pop(0)
            if isinstance(item, Tensor):
                flat.append(item)
            elif isinstance(item, dict):
                stack = list(item.values()) + stack
            elif isinstance(item, (list, tuple)):
                stack = list(item) + stack
        return tuple(flat)


def export_torchscript(model: nn.Module, out: Path, *, batch: int | None, half: bool) -> Path:
    """Write ``model`` as a TorchScript file with the ONNX file's contract (outputs as a tuple).

    Detectors: ``forward(images, *state, image_sizes=None)`` (:class:`~lstmdet.export.graph.TorchScriptEntry`);
    classifiers: ``forward(images)``. Metadata is the extra file ``lstmdet.json``
    (``torch.jit.load(f, _extra_files={"lstmdet.json": ""})``).

    Raises:
        ExportError: A part cannot be traced (named).
    """
    prepared = Prepared(model, half=half, batch=batch, onnx=False)
    module, inputs = prepared.module, prepared.inputs
    parts = Parts(module.net.model)
    with _tracing_warnings() as caught:
        try:
            with torch.no_grad():
                traced = torch.jit.trace(module, tuple(inputs), check_trace=False, strict=False)
        except ExportError:
            raise
        except Exception as exc:  # (named below)
            raise parts.blame_exception(exc, _part_tracer()) from exc
    check_frozen(module.net, _net_inputs(prepared), parts.suspects(caught), batch)
    fixed_reason = None if prepared.detect else "a classifier resizes every image to model.input.size"
    if fixed_reason is None:
        fixed_reason = size_mismatch(lambda xs: [t.numpy() for t in traced(*xs)], prepared, batch)
    if module.sizes_input:  # image_sizes becomes an optional keyword input after the state
        with quiet_torch_jit():
            traced = TorchScriptEntry(traced, [entry["input"] for entry in prepared.state])
    meta = contract.metadata(
        config=model.config, classes=list(model.classes), outputs=prepared.output_names, state=prepared.state,
        postprocess=prepared.settings, batch=batch, half=half, fixed_size=fixed_reason, stride=module.net.stride,
        exporter=f"torch {torch.__version__} torch.jit.trace + torch.jit.script (NMS)", sizes_input=module.sizes_input,
    )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    with quiet_torch_jit():
        torch.jit.save(traced, str(out), _extra_files={"lstmdet.json": json.dumps(meta)})
    return out


def _part_tracer() -> Any:
    def run_part(part: nn.Module) -> None:  # tracing failures carry their own traceback: nothing to probe
        return None

    return run_part
