"""The modules that are traced into an exported file: the network part and the post-processing.

:class:`ExportNet` runs what :meth:`LstmdetModel.run` runs on a batch of images already at the model's
input size, with only tensor operations: normalisation, zero padding to the backbone's stride, the
backbone, the neck, the encoders (a stateful encoder advances one frame through its
``export_step(x, state)``; its state tensors are inputs and outputs), and the head's networks. The
head's post-processing is :class:`DetectionPostprocess` (torchvision's FCOS / RetinaNet
``postprocess_detections`` rewritten for a whole batch with static shapes) or the classifier's
pooling and linear layer.

Non-maximum suppression comes in two forms with the same result: :func:`greedy_class_nms`, a
TorchScript-compilable greedy class-aware NMS (the TorchScript file, and eager PyTorch), and
:class:`OnnxDetectionPostprocess`, which emits ONNX ``NonMaxSuppression`` (per image and class).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import _topk_min

from lstmdet.errors import ExportError


def greedy_class_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Greedy class-aware NMS of every image of a batch (as ``torchvision.ops.batched_nms``).

    Candidates with a negative score are ignored. Within each image and class, a box is dropped when
    its IoU with a kept box of higher score is above ``iou_threshold``.

    Args:
        boxes: ``(N, M, 4)`` xyxy.
        scores: ``(N, M)``; negative for candidates that are not considered.
        labels: ``(N, M)`` int64 classes.
        iou_threshold: IoU above which the lower-scored box of a pair is dropped.

    Returns:
        ``(N, M)`` bool: the kept candidates.
    """
    keep = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    for b in range(scores.shape[0]):
        idx = torch.nonzero(scores[b] >= 0.0).flatten()
        if idx.numel() == 0:
            continue
        idx = idx[torch.argsort(scores[b][idx], descending=True)]
        bx = boxes[b][idx]
        area = (bx[:, 2] - bx[:, 0]) * (bx[:, 3] - bx[:, 1])
        lt = torch.max(bx[:, None, :2], bx[None, :, :2])
        rb = torch.min(bx[:, None, 2:], bx[None, :, 2:])
        wh = (rb - lt).clamp(min=0.0)
        inter = wh[:, :, 0] * wh[:, :, 1]
        iou = inter / (area[:, None] + area[None, :] - inter)
        lb = labels[b][idx]
        over = ((iou > iou_threshold) & (lb[:, None] == lb[None, :])).triu(1)
        alive = torch.ones(idx.shape, dtype=torch.bool, device=scores.device)
        for i in range(int(idx.shape[0])):
            if bool(alive[i]):
                alive = alive & ~over[i]
        keep[b, idx[alive]] = True
    return keep


class _OnnxNMS(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` over ``(N, C, M)`` per-class scores; eager: :func:`greedy_class_nms`.

    Returns ONNX's ``selected_indices``: ``(S, 3)`` int64 rows ``(image, class, candidate)``.
    """

    @staticmethod
    def forward(ctx: Any, boxes: Tensor, class_scores: Tensor, max_per_class: int, iou: float) -> Tensor:  # type: ignore[override]
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)  # the symbolic replaces these ops: do not record them
        try:
            scores, labels = class_scores.max(dim=1)
            keep = greedy_class_nms(boxes, scores, labels, iou)
            image, cand = torch.nonzero(keep, as_tuple=True)
            return torch.stack([image, labels[image, cand], cand], dim=1)
        finally:
            torch._C._set_tracing_state(state)

    @staticmethod
    def symbolic(g: Any, boxes: Any, class_scores: Any, max_per_class: int, iou: float) -> Any:
        return g.op(
            "NonMaxSuppression",
            boxes,
            class_scores,
            g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([-0.5], dtype=torch.float32)),
        )


class DetectionPostprocess(nn.Module):
    """torchvision's FCOS / RetinaNet ``postprocess_detections`` for a whole batch of any image size.

    Per level: scores (FCOS ``sqrt(sigmoid(cls) * sigmoid(ctrness))``, RetinaNet ``sigmoid(cls)``),
    the ``topk_candidates`` best of those above ``score_thresh``, boxes decoded from their anchors
    and clipped to each image's size; then class-aware NMS and the ``detections_per_img`` best, padded.
    Only the number of levels is fixed: every size follows the inputs' shapes.

    Args:
        head: The built-in ``fcos`` or ``retinanet`` head (thresholds and box coding are read from it).
    """

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.fcos = bool(head._name == "fcos")
        self.num_classes = int(head.num_classes)
        self.score_thresh = float(head.score_thresh)
        self.nms_thresh = float(head.nms_thresh)
        self.detections_per_img = int(head.detections_per_img)
        self.topk_candidates = int(head.topk_candidates)
        if self.fcos:
            self.box_weights = [1.0, 1.0, 1.0, 1.0]
            self.xform_clip = math.inf
        else:
            self.box_weights = [float(w) for w in head.box_coder.weights]
            self.xform_clip = float(head.box_coder.bbox_xform_clip)

    def settings(self) -> dict[str, Any]:
        """The post-processing baked into the graph (the ``postprocess`` metadata)."""
        return {
            "score_thresh": self.score_thresh,
            "nms_thresh": self.nms_thresh,
            "detections_per_img": self.detections_per_img,
            "topk_candidates": self.topk_candidates,
            "class_aware_nms": True,
        }

    def decode(self, codes: Tensor, anchors: Tensor) -> Tensor:
        """Boxes ``(N, k, 4)`` from box codes and their anchors, both ``(N, k, 4)`` (torchvision's arithmetic)."""
        if self.fcos:  # BoxLinearCoder(normalize_by_size=True).decode
            ctr_x = 0.5 * (anchors[..., 0] + anchors[..., 2])
            ctr_y = 0.5 * (anchors[..., 1] + anchors[..., 3])
            w = anchors[..., 2] - anchors[..., 0]
            h = anchors[..., 3] - anchors[..., 1]
            codes = codes * torch.stack((w, h, w, h), dim=-1)
            return torch.stack(
                (ctr_x - codes[..., 0], ctr_y - codes[..., 1], ctr_x + codes[..., 2], ctr_y + codes[..., 3]), dim=-1
            )
        # BoxCoder.decode_single
        w = anchors[..., 2] - anchors[..., 0]
        h = anchors[..., 3] - anchors[..., 1]
        ctr_x = anchors[..., 0] + 0.5 * w
        ctr_y = anchors[..., 1] + 0.5 * h
        wx, wy, ww, wh = self.box_weights
        dx = codes[..., 0] / wx
        dy = codes[..., 1] / wy
        dw = torch.clamp(codes[..., 2] / ww, max=self.xform_clip)
        dh = torch.clamp(codes[..., 3] / wh, max=self.xform_clip)
        pred_ctr_x = dx * w + ctr_x
        pred_ctr_y = dy * h + ctr_y
        half_w = 0.5 * (torch.exp(dw) * w)
        half_h = 0.5 * (torch.exp(dh) * h)
        return torch.stack((pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), dim=-1)

    def keep(self, boxes: Tensor, scores: Tensor, labels: Tensor) -> Tensor:
        """``(N, M)`` float, 1 for candidates kept by class-aware NMS (negative scores never are)."""
        return greedy_class_nms(boxes, scores, labels, self.nms_thresh).to(scores.dtype)

    def forward(
        self,
        cls_logits: list[Tensor],
        bbox_regression: list[Tensor],
        bbox_ctrness: list[Tensor],
        anchors: list[Tensor],
        limits: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Detections of a batch.

        Args:
            cls_logits: Per level ``(N, A_l, C)``.
            bbox_regression: Per level ``(N, A_l, 4)``.
            bbox_ctrness: Per level ``(N, A_l, 1)`` (FCOS; ignored for RetinaNet).
            anchors: Per level ``(A_l, 4)`` xyxy anchors, as the head makes them.
            limits: ``(N, 2)`` or ``(1, 2)`` float: the height and width each image's boxes are clipped to.

        Returns:
            ``boxes`` ``(N, K, 4)`` xyxy, ``scores`` ``(N, K)``, ``labels`` ``(N, K)`` int64 (-1 in
            padding rows), ``num_detections`` ``(N,)`` int64; ``K = detections_per_img``, best first.
        """
        c = self.num_classes
        max_y = limits[:, 0:1]  # (N, 1): broadcasts over the candidates
        max_x = limits[:, 1:2]
        all_boxes, all_scores, all_labels = [], [], []
        for i in range(len(cls_logits)):
            probs = torch.sigmoid(cls_logits[i])
            if self.fcos:
                probs = torch.sqrt(probs * torch.sigmoid(bbox_ctrness[i]))
            level = probs.flatten(1)  # (N, A_l * C)
            top, index = level.topk(_topk_min(level, self.topk_candidates, 1), dim=1)
            anchor = torch.div(index, c, rounding_mode="floor")
            codes = torch.gather(bbox_regression[i], 1, anchor[:, :, None].expand(-1, -1, 4))
            boxes = self.decode(codes, anchors[i][anchor])
            x = torch.min(boxes[..., 0::2].clamp(min=0.0), max_x[:, :, None])
            y = torch.min(boxes[..., 1::2].clamp(min=0.0), max_y[:, :, None])
            all_boxes.append(torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1))
            all_scores.append(top)
            all_labels.append(index % c)
        # K placeholder candidates (score -1: never kept) so that the final top-k always has K to choose from
        k = self.detections_per_img
        all_boxes.append(torch.zeros_like(all_boxes[0][:, :1]).expand(-1, k, -1))
        all_scores.append(torch.full_like(all_scores[0][:, :1], -1.0).expand(-1, k))
        all_labels.append(torch.zeros_like(all_labels[0][:, :1]).expand(-1, k))
        boxes = torch.cat(all_boxes, dim=1)
        scores = torch.cat(all_scores, dim=1)
        labels = torch.cat(all_labels, dim=1)
        candidates = torch.where(scores > self.score_thresh, scores, torch.full_like(scores, -1.0))
        kept = self.keep(boxes, candidates, labels)
        final = torch.where(kept > 0.5, scores, torch.full_like(scores, -1.0))
        top, index = final.topk(k, dim=1)
        valid = torch.gather(kept, 1, index)
        out_boxes = torch.gather(boxes, 1, index[:, :, None].expand(-1, -1, 4)) * valid[:, :, None]
        out_scores = top.clamp(min=0.0) * valid
        out_labels = torch.where(valid > 0.5, torch.gather(labels, 1, index), torch.full_like(index, -1))
        num = valid.sum(dim=1).to(torch.int64)
        return out_boxes, out_scores, out_labels, num


class OnnxDetectionPostprocess(DetectionPostprocess):
    """:class:`DetectionPostprocess` whose NMS is traced as ONNX ``NonMaxSuppression``."""

    def keep(self, boxes: Tensor, scores: Tensor, labels: Tensor) -> Tensor:
        classes = torch.arange(self.num_classes, device=labels.device)[None, :, None]
        class_scores = torch.where(
            labels[:, None, :] == classes, scores[:, None, :], torch.full_like(scores, -1.0)[:, None, :]
        )
        selected = _OnnxNMS.apply(boxes, class_scores, self.detections_per_img, self.nms_thresh)
        m = scores.shape[1]
        flat = selected[:, 0] * m + selected[:, 2]
        kept = torch.zeros_like(scores).reshape(-1).scatter(0, flat, torch.ones_like(flat, dtype=scores.dtype))
        return kept.reshape(scores.shape)


class ExportNet(nn.Module):
    """Images (and encoder state) to the head's raw outputs per level, its anchors (and new state).

    Detectors take images of any size: the graph pads them with zeros (after normalisation) to a
    multiple of the backbone's stride, as PyTorch's batching does, and makes each level's anchors
    from its feature map's size. Classifiers take images at ``model.input.size``.

    Args:
        model: The :class:`~lstmdet.model.LstmdetModel` (eval mode).
        half: Run the network in float16 (inputs, state and outputs stay float32).

    Raises:
        ExportError: A stateful encoder without ``export_step``, or a head lstmdet cannot export.
    """

    def __init__(self, model: nn.Module, half: bool = False) -> None:
        super().__init__()
        self.model = model
        self.half_precision = half
        spec = model.config["model"]["input"]
        self.register_buffer("mean", torch.tensor(spec["mean"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec["std"]).view(1, 3, 1, 1))
        self.detect = model.task == "detect"
        self.stride = int(getattr(model.transform, "size_divisible", 1)) if self.detect else 1
        self.state_layout: list[tuple[str, int]] = []  # (level, number of state tensors), in input order
        for level, encoder in model.encoders.items():
            if getattr(encoder, "stateful", False):
                if not callable(getattr(encoder, "export_step", None)):
                    raise ExportError(
                        f"encoder {model.config['model']['encoder']['name']!r} on level {level!r} is stateful but has "
                        "no export_step(x, state) method, so its memory cannot become graph inputs and outputs; "
                        "add one (see ConvLSTMEncoder.export_step) or export a stateless model"
                    )
                self.state_layout.append((level, 2 * int(encoder.num_layers)))

    @property
    def num_levels(self) -> int:
        """Feature levels the head reads."""
        return len(self.model.head_levels)

    def pad(self, x: Tensor) -> Tensor:
        """``x`` ``(N, C, H, W)`` zero-padded at the bottom and right to a multiple of the stride (detectors)."""
        if self.stride == 1:
            return x
        height, width = x.shape[-2], x.shape[-1]
        return F.pad(x, (0, (self.stride - width % self.stride) % self.stride,
                         0, (self.stride - height % self.stride) % self.stride))  # fmt: skip

    def forward(self, images: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        """Raw head outputs, then the new state tensors.

        Args:
            images: ``(N, 3, H, W)`` in ``[0, 1]``.
            *state: The state tensors in :attr:`state_layout` order, ``(N, C, h, w)`` each.

        Returns:
            Detectors: per level ``cls_logits (N, A_l, C)``, then per level ``bbox_regression (N, A_l, 4)``,
            ``bbox_ctrness (N, A_l, 1)`` (zeros for RetinaNet) and ``anchors (A_l, 4)``; classifiers:
            ``logits (N, num_classes)``; then the new state.
        """
        model = self.model
        x = self.pad((images - self.mean) / self.std)
        if self.half_precision:
            x = x.half()
        feats = model.backbone(x)
        if model.neck is not None:
            feats = model.neck(dict(feats))
        feats = dict(feats)
        new_state: list[Tensor] = []
        offset = 0
        for level, encoder in model.encoders.items():
            f = feats[level]
            if getattr(encoder, "stateful", False):
                count = 2 * int(encoder.num_layers)
                old = [s.to(f.dtype) for s in state[offset : offset + count]]
                feats[level], updated = encoder.export_step(f, old)
                new_state += [s.float() for s in updated]
                offset += count
            else:
                y, _ = encoder(f.unsqueeze(1), None)
                feats[level] = y.flatten(0, 1)
        levels = [feats[level] for level in model.head_levels]
        if not self.detect:
            return (model.head.logits(dict(zip(model.head_levels, levels, strict=True))).float(), *new_state)
        raw: list[list[Tensor]] = [[], [], [], []]
        for level in levels:  # the head's convolutions run per level: each level's outputs on their own
            out = model.head.head([level])
            cls_logits = out["cls_logits"].float()
            raw[0].append(cls_logits)
            raw[1].append(out["bbox_regression"].float())
            raw[2].append(
                out["bbox_ctrness"].float() if "bbox_ctrness" in out else torch.zeros_like(cls_logits[..., :1])
            )
        raw[3] = self.anchors([level.float() for level in levels])
        return (*(t for group in raw for t in group), *new_state)

    def anchors(self, levels: list[Tensor]) -> list[Tensor]:
        """Per level ``(A_l, 4)`` xyxy anchors for feature maps ``levels`` (the head's anchor generator)."""
        head = self.model.head
        strides = tuple(info.stride for info in head.feature_info)
        generator = head._make_anchor_generator(strides)
        generator.set_cell_anchors(torch.float32, levels[0].device)
        grid_sizes = [list(level.shape[-2:]) for level in levels]
        step = [[torch.tensor(s, dtype=torch.int64, device=levels[0].device)] * 2 for s in strides]
        return list(generator.grid_anchors(grid_sizes, step))


class ExportModule(nn.Module):
    """:class:`ExportNet` followed by the post-processing: the module an exported file holds.

    ``forward(images, [image_sizes,] *state) -> (*outputs, *new_state)`` with the outputs of
    :data:`~lstmdet.export.contract.DETECT_OUTPUTS` or :data:`~lstmdet.export.contract.CLASSIFY_OUTPUTS`.
    ``image_sizes`` (detectors with ``sizes_input``): ``(N, 2)`` or ``(1, 2)`` int64, the height and width of
    each image inside the batch, which its boxes are clipped to (at most the batch's ``H, W``).
    """

    def __init__(self, net: ExportNet, post: nn.Module | None, sizes_input: bool = False) -> None:
        super().__init__()
        self.net = net
        self.post = post
        self.sizes_input = bool(sizes_input and post is not None)
        self.num_state = sum(count for _, count in net.state_layout)

    def forward(self, images: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        """See the class docstring."""
        state = rest[1:] if self.sizes_input else rest
        out = self.net(images, *state)
        raw, new_state = out[: len(out) - self.num_state], out[len(out) - self.num_state :]
        if self.post is None:
            return (*raw, *new_state)
        limits = torch._shape_as_tensor(images)[2:].to(torch.float32)[None]  # (1, 2): H, W
        if self.sizes_input:
            limits = torch.min(rest[0].to(torch.float32), limits)
        n = self.net.num_levels
        groups = [list(raw[i * n : (i + 1) * n]) for i in range(4)]
        return (*self.post(groups[0], groups[1], groups[2], groups[3], limits), *new_state)


#: ``forward`` of :class:`TorchScriptEntry` (``{params}``: one ``, name: Tensor`` per state input).
_ENTRY_FORWARD = """
def forward(self, images: Tensor{params}, image_sizes: Optional[Tensor] = None):
    if image_sizes is None:
        sizes = torch.full([1, 2], 2147483647, dtype=torch.int64, device=images.device)
    else:
        sizes = image_sizes
    return self.traced(images, sizes{args})
"""


class TorchScriptEntry(torch.jit.ScriptModule):
    """The module a detector's TorchScript file holds: the traced :class:`ExportModule` with optional ``image_sizes``.

    ``forward(images, *state, image_sizes=None)``: ``images`` ``(N, 3, H, W)``, the state tensors in
    the metadata's order (stateful models), and ``image_sizes`` int64 ``(N, 2)`` or ``(1, 2)``, each
    image's height and width inside a padded batch, which its boxes are clipped to (``None``: the
    batch's ``H, W``, as the ONNX file's default). Returns the traced module's outputs.

    Args:
        traced: ``torch.jit.trace`` of an :class:`ExportModule` with ``sizes_input`` (inputs ``images,
            image_sizes, *state``).
        state_names: The state inputs' names (:func:`~lstmdet.export.contract.state_names`), in order.
    """

    def __init__(self, traced: torch.jit.ScriptModule, state_names: list[str]) -> None:
        super().__init__()
        self.traced = traced
        params = "".join(f", {name}: Tensor" for name in state_names)
        args = "".join(f", {name}" for name in state_names)
        self.define(_ENTRY_FORWARD.format(params=params, args=args))
