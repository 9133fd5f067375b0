"""torchvision's COCO detectors as lstmdet models (``torchvision:<builder>``): weights through torchvision's
weights API from a temporary hub cache (randomly initialised state dicts under the expected file names),
detections equal to torchvision's own model on real photos, identity-initialised encoders, checkpoints,
``--weights torchvision:...`` in detect, and the errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

import lstmdet
from lstmdet.checkpoint import load_model, save_checkpoint
from lstmdet.config import load_config
from lstmdet.errors import ConfigError, LstmdetError
from lstmdet.model import build_model
from lstmdet.pretrained import PRESETS, weights_file

PHOTOS = Path(__file__).parent.parent / "data" / "coco30" / "images"
BUILDERS = list(PRESETS)
SCORE = 0.002  # random weights score about 0.01: keep plenty of boxes to compare
SMALL = {"size": 256, "max_size": 384}  # a smaller input than the preset's 800 / 1333, for speed


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def photos(count: int = 2) -> list[torch.Tensor]:
    files = sorted(PHOTOS.glob("*.jpg"))[:count]
    return [pil_to_tensor(Image.open(f).convert("RGB")).float() / 255 for f in files]


def torchvision_detector(builder: str, hub_dir: Path) -> torch.nn.Module:
    """torchvision's detector, randomly initialised (BN statistics too), saved where its weights API looks."""
    torch.manual_seed(0)
    model = tvm.get_model(builder, weights=None, weights_backbone=None, num_classes=91)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if "running_var" in name:
                value.uniform_(0.5, 1.5)
            elif "running_mean" in name:
                value.uniform_(-0.1, 0.1)
    path, _ = weights_file(builder)
    assert path.parent == hub_dir / "checkpoints"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    model.eval()
    model.score_thresh = SCORE
    model.transform.min_size, model.transform.max_size = (SMALL["size"],), SMALL["max_size"]
    return model


def pretrained_config(builder: str, encoder: dict | None = None) -> dict:
    model = {"pretrained": f"torchvision:{builder}", "input": SMALL, "head": {"score_thresh": SCORE},
             "encoder": encoder or {"name": "identity"}}  # fmt: skip
    return {"task": "detect", "model": model}


def assert_same(ours: list[dict], theirs: list[dict]) -> None:
    for a, b in zip(ours, theirs, strict=True):
        assert len(b["boxes"]) > 10  # something to compare
        assert torch.equal(a["labels"], b["labels"])
        assert torch.allclose(a["boxes"], b["boxes"], atol=0.5, rtol=0)
        assert torch.allclose(a["scores"], b["scores"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("builder", BUILDERS)
def test_a_pretrained_detector_gives_torchvisions_detections(builder, hub):
    theirs_model = torchvision_detector(builder, hub.dir)
    ours_model = build_model(pretrained_config(builder)).eval()
    images = photos()
    with torch.no_grad():
        theirs = theirs_model(images)
        ours = ours_model(images)
    assert_same(ours, theirs)
    assert ours_model.classes[1] == "person" and ours_model.category_ids[:3] == [0, 1, 2]
    assert len(ours_model.classes) == 91 and hub.calls == []


def test_identity_initialised_encoders_change_nothing_then_learn(hub):
    torchvision_detector("fcos_resnet50_fpn", hub.dir)
    images = photos(1)
    base = build_model(pretrained_config("fcos_resnet50_fpn")).eval()
    with torch.no_grad():
        expected = base(images)
    for encoder in ({"name": "lstm", "hidden": 8, "init": "identity", "levels": ["c6", "c7"]},
                    {"name": "bilstm", "hidden": 8, "init": "identity", "levels": ["c7"]},
                    {"name": "convlstm", "hidden": 16, "init": "identity"}):  # fmt: skip
        model = build_model(pretrained_config("fcos_resnet50_fpn", encoder)).eval()
        with torch.no_grad():
            got = model(images)
        assert torch.allclose(got[0]["boxes"], expected[0]["boxes"], atol=1e-6, rtol=0), encoder["name"]
        assert torch.allclose(got[0]["scores"], expected[0]["scores"], atol=1e-6, rtol=0), encoder["name"]
        proj = next(iter(model.encoders.values())).proj
        assert proj.weight.abs().sum() == 0  # the zero projection, which training moves
        model.train()
        target = [{"boxes": torch.tensor([[10.0, 20.0, 120.0, 200.0]]), "labels": torch.tensor([1])}]
        sum(model(images, target).values()).backward()
        assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


def test_a_checkpoint_of_a_pretrained_model_loads_without_the_hub_file(hub, tmp_path):
    torchvision_detector("retinanet_resnet50_fpn", hub.dir)
    model = build_model(pretrained_config("retinanet_resnet50_fpn", {"name": "lstm", "hidden": 8, "init": "identity",
                                                                     "levels": ["c7"]}))  # fmt: skip
    save_checkpoint(tmp_path / "ft.pt", model)
    weights_file("retinanet_resnet50_fpn")[0].unlink()
    loaded = load_model(tmp_path / "ft.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_detect_with_torchvision_weights_gives_torchvisions_boxes(hub, tmp_path):
    theirs_model = torchvision_detector("fcos_resnet50_fpn", hub.dir)
    theirs_model.transform.min_size, theirs_model.transform.max_size = (800,), 1333  # detect runs the preset
    src = tmp_path / "src"
    src.mkdir()
    files = sorted(PHOTOS.glob("*.jpg"))[:1]
    (src / files[0].name).write_bytes(files[0].read_bytes())
    summary = lstmdet.detect(src, tmp_path / "out", "torchvision:fcos_resnet50_fpn", workers=0, progress=False,
                             score_thresh=SCORE)  # fmt: skip
    assert summary["weights"] == "torchvision:fcos_resnet50_fpn" and len(summary["weights_sha256"]) == 64
    line = json.loads((tmp_path / "out" / "detections.jsonl").read_text().splitlines()[0])
    with torch.no_grad():
        theirs = theirs_model(photos(1))[0]
    keep = theirs["scores"] >= SCORE
    boxes = [[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]]
             for d in line["detections"]]  # fmt: skip
    assert len(boxes) == int(keep.sum()) > 10
    assert torch.allclose(torch.tensor(boxes), theirs["boxes"][keep], atol=0.5, rtol=0)
    assert [d["category_id"] for d in line["detections"]] == theirs["labels"][keep].tolist()


def test_a_missing_weights_file_says_where_torchvision_looked(hub):
    path, url = weights_file("fcos_resnet50_fpn")
    with pytest.raises(LstmdetError) as info:
        build_model(pretrained_config("fcos_resnet50_fpn"))
    message = str(info.value)
    assert str(path) in message and url in message and "copy it there" in message
    assert hub.calls == [url]


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"model\.pretrained.*unknown pretrained detector.*torchvision:fcos_resnet50"):
        load_config({"task": "detect", "model": {"pretrained": "torchvision:yolo"}})
    with pytest.raises(ConfigError, match=r"model\.category_ids.*goes with model\.classes"):
        load_config({"task": "detect", "model": {"pretrained": "torchvision:fcos_resnet50_fpn",
                                                 "category_ids": [1, 2]}})  # fmt: skip
    config = load_config({"task": "detect", "model": {"pretrained": "torchvision:retinanet_resnet50_fpn_v2",
                                                              "head": {"score_thresh": 0.5}}})  # fmt: skip
    assert config["model"]["head"]["score_thresh"] == 0.5 and config["model"]["head"]["norm"] == "group"
    assert config["model"]["neck"] == {"channels": 256, "extra": "p6p7", "extra_from": "c5"}


def test_own_classes_load_every_weight_but_the_classification_layer(hub):
    theirs = torchvision_detector("retinanet_resnet50_fpn", hub.dir).state_dict()
    config = pretrained_config("retinanet_resnet50_fpn")
    config["model"]["classes"] = ["cat", "dog", "digit"]
    model = build_model(config)
    assert model.classes == ["cat", "dog", "digit"] and model.head.num_classes == 3
    ours = model.state_dict()
    assert torch.equal(ours["backbone.layer4.2.conv3.weight"], theirs["backbone.body.layer4.2.conv3.weight"])
    assert torch.equal(ours["head.head.classification_head.conv.0.0.weight"],
                       theirs["head.classification_head.conv.0.0.weight"])  # fmt: skip
    weight, coco = (
        ours["head.head.classification_head.cls_logits.weight"],
        theirs["head.classification_head.cls_logits.weight"],
    )
    assert weight.shape[0] == 9 * 3  # 9 anchors x 3 classes, anchor-major
    for a in range(9):  # cat and dog keep COCO's outputs of that name (ids 17 and 18); digit is new
        for k, coco_id in enumerate((17, 18)):
            assert torch.equal(weight[a * 3 + k], coco[a * 91 + coco_id])
        assert not any(torch.equal(weight[a * 3 + 2], row) for row in coco)
