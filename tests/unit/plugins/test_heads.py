"""Unit tests of the built-in heads: ``classifier`` (plugins.heads_classifier) and ``fcos`` /
``retinanet`` (plugins.heads_detection), used directly (no registry).

The learning tests train a tiny model for a few hundred steps on CPU; each takes a few seconds on
two threads and is marked ``slow``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from lstmdet import FeatureInfo
from lstmdet.errors import AssemblyError
from lstmdet.plugins import heads_classifier, heads_detection
from lstmdet.plugins.heads_classifier import ClassifierHead
from lstmdet.plugins.heads_detection import FCOSDetectionHead, RetinaNetDetectionHead

DETECTORS = {"fcos": FCOSDetectionHead, "retinanet": RetinaNetDetectionHead}


def image_list(n: int, h: int = 64, w: int = 64, sizes: list[tuple[int, int]] | None = None) -> ImageList:
    return ImageList(torch.rand(n, 3, h, w), sizes if sizes is not None else [(h, w)] * n)


def info(c: int, strides: tuple[int, ...] = (8, 16), prefix: str = "p") -> list[FeatureInfo]:
    """The ``feature_info`` of :func:`features`' levels (``p0``, ``p1``, ...) for a 64 px image."""
    return [FeatureInfo(f"{prefix}{i}", c, s) for i, s in enumerate(strides)]


def features(n: int, c: int, sizes: tuple[tuple[int, int], ...] = ((8, 8), (4, 4))) -> dict[str, Tensor]:
    return {f"p{i}": torch.randn(n, c, h, w) for i, (h, w) in enumerate(sizes)}


# --------------------------------------------------------------------------------------------------
# classifier
# --------------------------------------------------------------------------------------------------


def test_classifier_shapes_and_inference_format() -> None:
    head = ClassifierHead(16, 5).eval()
    assert head.task == "classify"
    feats = features(3, 16)
    assert head.logits(feats).shape == (3, 5)
    out = head(feats, image_list(3))
    assert isinstance(out, list) and len(out) == 3
    for pred in out:
        assert pred["scores"].shape == (5,)
        assert pred["labels"].shape == () and pred["labels"].dtype == torch.int64
        assert torch.allclose(pred["scores"].sum(), torch.tensor(1.0))
        assert int(pred["labels"]) == int(pred["scores"].argmax())


@pytest.mark.parametrize("pool", ["mean", "max", "last"])
def test_classifier_pooling_matches_independent_computation(pool: str) -> None:
    torch.manual_seed(0)
    head = ClassifierHead(6, 4, pool=pool).eval()
    x = torch.randn(2, 6, 3, 5)
    expected = []
    for img in x:  # (C, h, w), computed position by position
        columns = [img[:, i, j] for i in range(img.shape[1]) for j in range(img.shape[2])]
        if pool == "mean":
            vec = torch.stack(columns).sum(0) / len(columns)
        elif pool == "max":
            vec = torch.stack(columns).max(0).values
        else:
            vec = columns[-1]  # row-major order: the last step of a top-to-bottom sweep
        expected.append(head.fc.weight @ vec + head.fc.bias)
    got = head.logits({"only": x})
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool", ["mean", "max", "last"])
def test_classifier_ignores_padding(pool: str) -> None:
    torch.manual_seed(0)
    head = ClassifierHead(4, 3, pool=pool).eval()
    x = torch.randn(2, 4, 8, 8)
    images = image_list(2, 64, 64, sizes=[(64, 64), (32, 48)])  # image 1 covers an (4, 6) corner
    got = head.logits({"f": x}, images)
    alone = head.logits({"f": x[1:, :, :4, :6]})
    torch.testing.assert_close(got[1:], alone)
    torch.testing.assert_close(got[:1], head.logits({"f": x[:1]}))


def test_classifier_uses_last_level_by_default_or_the_named_one() -> None:
    feats = {"a": torch.randn(2, 8, 4, 4), "b": torch.randn(2, 8, 2, 2)}
    head = ClassifierHead(8, 3).eval()
    torch.testing.assert_close(head.logits(feats), head.fc(feats["b"].mean((2, 3))))
    head.level = "a"
    torch.testing.assert_close(head.logits(feats), head.fc(feats["a"].mean((2, 3))))
    head.level = "zzz"
    with pytest.raises(AssemblyError, match="zzz"):
        head.logits(feats)
    with pytest.raises(AssemblyError, match="in_channels"):
        ClassifierHead(5, 3).logits(feats)


def test_classifier_loss_is_cross_entropy() -> None:
    torch.manual_seed(0)
    head = ClassifierHead(8, 4, dropout=0.5).eval()  # eval: dropout off, so logits are reproducible
    feats = features(5, 8)
    labels = torch.tensor([0, 3, 1, 1, 2])
    losses = head(feats, image_list(5), [{"labels": lab} for lab in labels])
    assert set(losses) == {"loss_cls"}
    torch.testing.assert_close(losses["loss_cls"], F.cross_entropy(head.logits(feats), labels))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        head(feats, image_list(5), [{"labels": torch.tensor(4)}] * 5)
    with pytest.raises(ValueError, match="one target"):
        head(feats, image_list(5), [{"labels": torch.tensor(0)}] * 4)


def test_classifier_learns_a_separable_problem() -> None:
    torch.manual_seed(0)
    n, c, k = 256, 8, 3
    labels = torch.randint(0, k, (n,))
    centres = torch.randn(k, c) * 2.0
    x = centres[labels][:, :, None, None] + torch.randn(n, c, 4, 4)  # class signal + noise everywhere
    feats, images = {"f": x}, image_list(n, 32, 32)
    head = ClassifierHead(c, k, pool="mean", dropout=0.1)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    targets = [{"labels": lab} for lab in labels]
    for _ in range(60):
        loss = head(feats, images, targets)["loss_cls"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        predicted = torch.stack([p["labels"] for p in head(feats, images)])
    assert (predicted == labels).float().mean() > 0.9


@pytest.mark.parametrize(
    "options",
    [
        {"pool": "avg"},
        {"pool": "MEAN"},
        {"dropout": 1.0},
        {"dropout": -0.1},
        {"level": ""},
        {"level": 3},
    ],
)
def test_classifier_bad_options(options: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        ClassifierHead(8, 3, **options)


@pytest.mark.parametrize(("in_channels", "num_classes"), [(0, 3), (8, 0), (8.0, 3)])
def test_classifier_bad_sizes(in_channels: object, num_classes: object) -> None:
    with pytest.raises(ValueError):
        ClassifierHead(in_channels, num_classes)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# detection heads: format, losses, options
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fcos", "retinanet"])
def test_detection_inference_format(name: str) -> None:
    torch.manual_seed(0)
    head = DETECTORS[name](32, 3, feature_info=info(32), score_thresh=0.0, detections_per_img=50).eval()
    assert head.task == "detect"
    sizes = [(64, 64), (40, 52)]
    with torch.no_grad():
        out = head(features(2, 32), image_list(2, 64, 64, sizes))
    assert isinstance(out, list) and len(out) == 2
    for det, (h, w) in zip(out, sizes, strict=True):
        boxes, scores, labels = det["boxes"], det["scores"], det["labels"]
        assert 0 < boxes.shape[0] <= 50 and boxes.shape == (scores.shape[0], 4)
        assert boxes.dtype == torch.float32 and scores.dtype == torch.float32 and labels.dtype == torch.int64
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2:] >= boxes[:, :2]).all()
        assert ((scores >= 0) & (scores <= 1)).all() and (scores[:-1] >= scores[1:]).all()
        assert ((labels >= 0) & (labels < 3)).all()


@pytest.mark.parametrize("name", ["fcos", "retinanet"])
def test_detection_threshold_can_leave_no_detections(name: str) -> None:
    head = DETECTORS[name](32, 2, feature_info=info(32), score_thresh=1.0).eval()
    with torch.no_grad():
        out = head(features(1, 32), image_list(1))
    assert out[0]["boxes"].shape == (0, 4) and out[0]["labels"].shape == (0,)


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        ("fcos", {"classification", "bbox_regression", "bbox_ctrness"}),
        ("retinanet", {"classification", "bbox_regression"}),
    ],
)
def test_detection_training_losses(name: str, keys: set[str]) -> None:
    torch.manual_seed(0)
    head = DETECTORS[name](32, 3, feature_info=info(32)).train()
    feats = {k: v.requires_grad_() for k, v in features(2, 32).items()}
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [33.0, 20.0, 60.0, 50.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # an image with no objects
    ]
    losses = head(feats, image_list(2), targets)
    assert set(losses) == keys
    for value in losses.values():
        assert value.shape == () and torch.isfinite(value)
    sum(losses.values()).backward()
    assert all(torch.isfinite(f.grad).all() for f in feats.values())
    assert all(p.grad is not None for p in head.parameters())


@pytest.mark.parametrize("name", ["fcos", "retinanet"])
def test_detection_handles_sizes_that_are_not_multiples_of_the_stride(name: str) -> None:
    head = DETECTORS[name](32, 2, feature_info=info(32), score_thresh=0.0).eval()
    feats = features(1, 32, sizes=((13, 10), (7, 5)))  # a 100 x 75 image at strides 8 and 16
    with torch.no_grad():
        out = head(feats, image_list(1, 100, 75))
    assert out[0]["boxes"].shape[0] > 0
    assert (out[0]["boxes"][:, 2] <= 75).all() and (out[0]["boxes"][:, 3] <= 100).all()
    assert list(head._anchor_generators) == [(8, 16)]  # the strides of feature_info, never guessed


@pytest.mark.parametrize("name", ["fcos", "retinanet"])
def test_detection_heads_use_the_strides_they_are_told(name: str) -> None:
    """A 64 px image whose maps are 8 and 4 high: strides 8 and 16 by size, but told 4 and 32 the
    head must place its anchors at strides 4 and 32 (it used to guess from the map sizes)."""
    told = DETECTORS[name](32, 2, feature_info=info(32, (4, 32)))
    anchors = told._anchors(list(features(1, 32).values()), image_list(1))[0]
    guessed = DETECTORS[name](32, 2, feature_info=info(32))._anchors(list(features(1, 32).values()), image_list(1))[0]
    assert anchors.shape == guessed.shape and not torch.equal(anchors, guessed)
    per_location = told.num_anchors
    first = (anchors[:per_location, :2] + anchors[:per_location, 2:]) / 2  # location (0, 0) of level 0
    second = (anchors[per_location : 2 * per_location, :2] + anchors[per_location : 2 * per_location, 2:]) / 2
    assert (second - first)[:, 0].unique().tolist() == [4.0]  # next location: one stride (4) to the right
    last = 8 * 8 * per_location + per_location  # location (0, 1) of level 1
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert (centres[last] - centres[8 * 8 * per_location])[0] == 32.0


@pytest.mark.parametrize("name", ["fcos", "retinanet"])
def test_detection_heads_need_matching_feature_info(name: str) -> None:
    with pytest.raises(ValueError, match=r"needs the feature levels it reads: pass feature_info="):
        DETECTORS[name](32, 2)
    with pytest.raises(ValueError, match=r"level 'p0' has 16 channels but the head was built with in_channels=32"):
        DETECTORS[name](32, 2, feature_info=info(16))
    with pytest.raises(ValueError, match=r"stride"):
        DETECTORS[name](32, 2, feature_info=[FeatureInfo("p0", 32, 0)])
    with pytest.raises(ValueError, match=r"names repeat"):
        DETECTORS[name](32, 2, feature_info=[FeatureInfo("p0", 32, 8), FeatureInfo("p0", 32, 16)])
    head = DETECTORS[name](32, 2, feature_info=info(32, prefix="c"))
    with pytest.raises(AssemblyError, match=r"built for levels \['c0', 'c1'\] .* received \['p0', 'p1'\]"):
        head(features(1, 32), image_list(1))


def test_fcos_anchor_points_have_the_stride_as_size() -> None:
    head = FCOSDetectionHead(32, 2, feature_info=info(32))
    levels = list(features(1, 32).values())
    anchors = head._anchors(levels, image_list(1))[0]
    assert anchors.shape == (8 * 8 + 4 * 4, 4)
    widths = anchors[:, 2] - anchors[:, 0]
    assert (widths[:64] == 8).all() and (widths[64:] == 16).all()


def test_fcos_anchor_offsets_add_points_between_locations() -> None:
    head = FCOSDetectionHead(32, 2, feature_info=info(32), anchor_offsets=[[0, 0], [0.5, 0], [0.25, 0.75]])
    assert head.num_anchors == 3
    assert head.head.classification_head.cls_logits.out_channels == 3 * 2
    assert head.head.regression_head.bbox_reg.out_channels == 3 * 4
    anchors = head._anchors(list(features(1, 32).values()), image_list(1))[0]
    assert anchors.shape == ((8 * 8 + 4 * 4) * 3, 4)
    # location-major, offset-minor, as the head's outputs: location (row 1, col 2) of the stride-8 map
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    first = (1 * 8 + 2) * 3
    assert centres[first : first + 3].tolist() == [[16.0, 8.0], [20.0, 8.0], [18.0, 14.0]]
    widths = anchors[:, 2] - anchors[:, 0]
    assert (widths[: 64 * 3] == 8).all() and (widths[64 * 3 :] == 16).all()
    stride16 = 64 * 3 + (2 * 4 + 3) * 3  # location (row 2, col 3) of the stride-16 map
    assert centres[stride16 : stride16 + 3].tolist() == [[48.0, 32.0], [56.0, 32.0], [52.0, 44.0]]


def test_fcos_default_anchor_points_are_torchvisions() -> None:
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    levels = list(features(1, 32).values())
    ours = FCOSDetectionHead(32, 2, feature_info=info(32))._anchors(levels, image_list(1))[0]
    theirs = AnchorGenerator(((8,), (16,)), ((1.0,), (1.0,)))(image_list(1), levels)[0]
    assert torch.equal(ours, theirs)


def test_fcos_anchor_offsets_give_a_thin_box_positives() -> None:
    """A 4 px wide box between two stride-8 points has no positive location unless points are added.

    With no positive, torchvision's FCOS box-regression loss is 0 (a sum over no anchors); with one
    it is the GIoU loss of the untrained head's boxes, well above 0.
    """
    torch.manual_seed(0)
    thin = [{"boxes": torch.tensor([[17.0, 4.0, 21.0, 40.0]]), "labels": torch.tensor([1])}]
    feats = {"p0": torch.randn(1, 32, 8, 8)}
    losses = {}
    for offsets in ([[0, 0]], [[0, 0], [0.5, 0]]):
        head = FCOSDetectionHead(32, 2, feature_info=info(32, (8,)), num_convs=1, anchor_offsets=offsets).train()
        losses[len(offsets)] = head(feats, image_list(1), thin)["bbox_regression"]
    assert float(losses[1].detach()) == 0.0
    assert float(losses[2].detach()) > 0.5


def test_retinanet_anchor_layout() -> None:
    head = RetinaNetDetectionHead(
        32, 2, feature_info=info(32), anchor_scale=2.0, scales_per_octave=2, aspect_ratios=[1.0]
    )
    assert head.num_anchors == 2
    assert head.anchor_sizes(8) == pytest.approx((16.0, 16.0 * math.sqrt(2)))
    anchors = head._anchors(list(features(1, 32).values()), image_list(1))[0]
    assert anchors.shape == ((8 * 8 + 4 * 4) * 2, 4)
    assert head.head.classification_head.cls_logits.out_channels == 2 * 2


@pytest.mark.parametrize("norm", ["batch", "none"])
@pytest.mark.parametrize("name", ["fcos", "retinanet"])
def test_detection_norm_options_work_for_any_channel_count(name: str, norm: str) -> None:
    head = DETECTORS[name](24, 2, feature_info=info(24), norm=norm, num_convs=2)
    kinds = {type(m) for m in head.modules()}
    assert nn.GroupNorm not in kinds
    assert (nn.BatchNorm2d in kinds) == (norm == "batch")
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])}] * 2
    losses = head.train()(features(2, 24), image_list(2), targets)
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("name", ["fcos", "retinanet"])
def test_detection_group_norm_needs_multiple_of_32(name: str) -> None:
    with pytest.raises(ValueError, match="divisible by 32"):
        DETECTORS[name](48, 2, feature_info=info(48), norm="group")
    head = DETECTORS[name](64, 2, feature_info=info(64), norm="group")
    assert any(isinstance(m, nn.GroupNorm) for m in head.modules())


@pytest.mark.parametrize("num_convs", [0, 2, 5])
def test_retinanet_num_convs(num_convs: int) -> None:
    head = RetinaNetDetectionHead(32, 2, feature_info=info(32), num_convs=num_convs)
    assert len(head.head.classification_head.conv) == num_convs
    assert len(head.head.regression_head.conv) == num_convs
    fcos = FCOSDetectionHead(32, 2, feature_info=info(32), num_convs=num_convs)
    assert sum(isinstance(m, nn.Conv2d) for m in fcos.head.classification_head.conv) == num_convs


@pytest.mark.parametrize("name", ["fcos", "retinanet"])
def test_detection_state_dict_round_trip(name: str) -> None:
    torch.manual_seed(0)
    head = DETECTORS[name](32, 3, feature_info=info(32), score_thresh=0.0).eval()
    feats, images = features(1, 32), image_list(1)
    with torch.no_grad():
        before = head(feats, images)
    state = head.state_dict()
    assert all(key.startswith("head.") for key in state)
    other = DETECTORS[name](32, 3, feature_info=info(32), score_thresh=0.0).eval()
    other.load_state_dict(state)
    with torch.no_grad():
        after = other(feats, images)
    torch.testing.assert_close(before[0]["boxes"], after[0]["boxes"])


@pytest.mark.parametrize("name", ["fcos", "retinanet"])
def test_detection_bad_inputs(name: str) -> None:
    head = DETECTORS[name](32, 3, feature_info=info(32)).train()
    feats, images = features(1, 32), image_list(1)
    box = torch.tensor([[4.0, 6.0, 30.0, 40.0]])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        head(feats, images, [{"boxes": box, "labels": torch.tensor([3])}])
    with pytest.raises(ValueError, match="x2 > x1"):
        head(feats, images, [{"boxes": torch.tensor([[10.0, 6.0, 10.0, 40.0]]), "labels": torch.tensor([0])}])
    with pytest.raises(ValueError, match=r"\(M, 4\)"):
        head(feats, images, [{"boxes": box, "labels": torch.tensor([0, 1])}])
    with pytest.raises(ValueError, match="boxes"):
        head(feats, images, [{"labels": torch.tensor([0])}])
    with pytest.raises(ValueError, match="one target dict per image"):
        head(feats, images, [{"boxes": box, "labels": torch.tensor([0])}] * 2)
    with pytest.raises(AssemblyError, match="in_channels"):
        head(features(1, 16), images)
    with pytest.raises(AssemblyError, match="no feature maps"):
        head({}, images)


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("fcos", {"norm": "layer"}, "norm"),
        ("fcos", {"score_thresh": 1.5}, "score_thresh"),
        ("fcos", {"nms_thresh": -0.1}, "nms_thresh"),
        ("fcos", {"detections_per_img": 0}, "detections_per_img"),
        ("fcos", {"topk_candidates": 2.5}, "topk_candidates"),
        ("fcos", {"center_sampling_radius": 0}, "center_sampling_radius"),
        ("fcos", {"num_convs": -1}, "num_convs"),
        ("fcos", {"anchor_offsets": []}, "anchor_offsets"),
        ("fcos", {"anchor_offsets": [[0, 1]]}, r"\[0, 1\)"),
        ("fcos", {"anchor_offsets": [[0.5]]}, "anchor_offsets"),
        ("fcos", {"anchor_offsets": [[0, 0], [0.0, 0.0]]}, "repeats"),
        ("fcos", {"anchor_offsets": "0.5"}, "anchor_offsets"),
        ("retinanet", {"anchor_scale": 0}, "anchor_scale"),
        ("retinanet", {"scales_per_octave": 0}, "scales_per_octave"),
        ("retinanet", {"aspect_ratios": ()}, "aspect_ratios"),
        ("retinanet", {"aspect_ratios": (1.0, -2.0)}, "aspect_ratios"),
        ("retinanet", {"aspect_ratios": "1.0"}, "aspect_ratios"),
        ("retinanet", {"fg_iou_thresh": 0.3, "bg_iou_thresh": 0.4}, "bg_iou_thresh"),
        ("retinanet", {"fg_iou_thresh": 1.5}, "fg_iou_thresh"),
        ("retinanet", {"norm": "batchnorm"}, "group, batch, none"),
    ],
)
def test_detection_bad_options(name: str, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DETECTORS[name](32, 2, feature_info=info(32), **options)


def test_plugins_register_their_heads() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.added: dict[str, object] = {}

        def add(self, name: str, factory: object) -> None:
            self.added[name] = factory

    registry = Recorder()
    heads_classifier.lstmdet_register_heads(registry)
    heads_detection.lstmdet_register_heads(registry)
    assert registry.added == {
        "classifier": ClassifierHead,
        "fcos": FCOSDetectionHead,
        "retinanet": RetinaNetDetectionHead,
    }


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["classifier", "fcos", "retinanet"])
def test_heads_run_on_cuda(name: str) -> None:
    dev = torch.device("cuda")
    head = (ClassifierHead(32, 3) if name == "classifier" else DETECTORS[name](32, 3, feature_info=info(32))).to(dev)
    feats = {k: v.to(dev) for k, v in features(2, 32).items()}
    images = image_list(2).to(dev)
    if name == "classifier":
        targets = [{"labels": torch.tensor(1, device=dev)}] * 2
    else:
        targets = [
            {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]], device=dev), "labels": torch.tensor([1], device=dev)}
        ]
        targets = targets * 2
    losses = head.train()(feats, images, targets)
    assert all(torch.isfinite(v) and v.device.type == "cuda" for v in losses.values())
    with torch.no_grad():
        out = head.eval()(feats, images)
    assert all(t.device.type == "cuda" for det in out for t in det.values())


# --------------------------------------------------------------------------------------------------
# detection heads: learning
# --------------------------------------------------------------------------------------------------

COLOURS = torch.tensor([[1.0, 0.25, 0.25], [0.25, 1.0, 0.25]])  # class 0 reddish, class 1 greenish


def synthetic_boxes(n: int, seed: int, widths: tuple[int, int] | None = None) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """``n`` dark 64x64 images with 1-2 separated bright rectangles of 2 classes.

    Sides are 12-24 px; ``widths`` (low, high) draws the widths from ``range(low, high)`` instead.
    """
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(n):
        img = torch.rand(3, 64, 64, generator=g) * 0.1
        boxes: list[list[int]] = []
        labels: list[int] = []
        wanted = int(torch.randint(1, 3, (1,), generator=g))
        while len(boxes) < wanted:
            w, h = (int(v) for v in torch.randint(12, 25, (2,), generator=g))
            if widths is not None:
                w = int(torch.randint(*widths, (1,), generator=g))
            x = int(torch.randint(0, 64 - w + 1, (1,), generator=g))
            y = int(torch.randint(0, 64 - h + 1, (1,), generator=g))
            if any(x < b[2] + 2 and b[0] < x + w + 2 and y < b[3] + 2 and b[1] < y + h + 2 for b in boxes):
                continue  # keep rectangles apart
            label = int(torch.randint(0, 2, (1,), generator=g))
            img[:, y : y + h, x : x + w] = COLOURS[label][:, None, None]
            boxes.append([x, y, x + w, y + h])
            labels.append(label)
        images.append(img)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return torch.stack(images), targets


#: The levels :class:`TinyFeatures` returns.
TINY_INFO = [FeatureInfo("s8", 32, 8), FeatureInfo("s16", 32, 16)]


class TinyFeatures(nn.Module):
    """Three stride-2 convs to stride 8 (32 channels), one more to stride 16."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.ReLU())

        self.s8 = nn.Sequential(block(3, 16), block(16, channels), block(channels, channels))
        self.s16 = block(channels, channels)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        p8 = self.s8(x)
        return {"s8": p8, "s16": self.s16(p8)}


def top_detections_hit_rate(detections: list[dict[str, Tensor]], targets: list[dict[str, Tensor]]) -> float:
    """Share of GT boxes matched (IoU > 0.5, same label) by one of the image's top-``M`` detections.

    ``M`` is the image's number of GT boxes, and each detection may match one box only, so the rate
    is low if the top detections are duplicates, mislabelled or misplaced.
    """
    hits = total = 0
    for det, tgt in zip(detections, targets, strict=True):
        m = len(tgt["boxes"])
        total += m
        boxes, labels = det["boxes"][:m], det["labels"][:m]
        if len(boxes) == 0:
            continue
        iou = box_iou(tgt["boxes"], boxes)  # (M, m')
        iou[tgt["labels"][:, None] != labels[None, :]] = 0.0
        used: set[int] = set()
        for row in iou:
            best = [j for j in row.argsort(descending=True).tolist() if j not in used and row[j] > 0.5]
            if best:
                used.add(best[0])
                hits += 1
    return hits / total


def train_detector(
    head: nn.Module, steps: int, seed: int = 0, widths: tuple[int, int] | None = None
) -> tuple[nn.Module, Tensor, list]:
    torch.manual_seed(seed)
    x, targets = synthetic_boxes(16, seed=1, widths=widths)
    net = TinyFeatures()
    opt = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=3e-3)
    net.train()
    head.train()
    for _ in range(steps):
        idx = torch.randperm(len(x))[:8].tolist()
        losses = head(net(x[idx]), ImageList(x[idx], [(64, 64)] * 8), [targets[i] for i in idx])
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    head.eval()
    with torch.no_grad():
        detections = head(net(x), ImageList(x, [(64, 64)] * len(x)))
    return net, detections, targets


def held_out_hit_rate(net: nn.Module, head: nn.Module) -> float:
    x, targets = synthetic_boxes(16, seed=100)
    with torch.no_grad():
        detections = head(net(x), ImageList(x, [(64, 64)] * len(x)))
    return top_detections_hit_rate(detections, targets)


@pytest.mark.slow
def test_fcos_learns_to_detect_rectangles() -> None:
    head = FCOSDetectionHead(32, 2, feature_info=TINY_INFO, num_convs=2)
    net, detections, targets = train_detector(head, steps=200)
    assert top_detections_hit_rate(detections, targets) > 0.9
    assert held_out_hit_rate(net, head) > 0.6  # and it generalises somewhat from 16 images


@pytest.mark.slow
def test_fcos_with_anchor_offsets_learns_thin_rectangles() -> None:
    """Rectangles 5-7 px wide, at whole-pixel x: with points every 4 px in x (offsets) every one
    holds a point, and FCOS learns them; with points every 8 px a box of width ``w`` holds one
    with chance ``(w - 1) / 8`` (about 1 in 3 holds none), and the same training misses those.
    """
    rates = {}
    for offsets in ([[0, 0]], [[0, 0], [0.5, 0]]):
        head = FCOSDetectionHead(32, 2, feature_info=TINY_INFO, num_convs=2, anchor_offsets=offsets)
        _, detections, targets = train_detector(head, steps=200, widths=(5, 8))
        rates[len(offsets)] = top_detections_hit_rate(detections, targets)
    assert rates[2] > 0.9
    assert rates[1] < rates[2] - 0.1


@pytest.mark.slow
def test_retinanet_learns_to_detect_rectangles() -> None:
    # anchor_scale 2 gives anchors of 16-25 px at stride 8, the size of the rectangles
    head = RetinaNetDetectionHead(32, 2, feature_info=TINY_INFO, num_convs=2, anchor_scale=2.0, norm="group")
    net, detections, targets = train_detector(head, steps=200)
    assert top_detections_hit_rate(detections, targets) > 0.9
    assert held_out_hit_rate(net, head) > 0.6
