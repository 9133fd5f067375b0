"""The export graph's pieces in eager PyTorch: NMS and post-processing equal torchvision's."""

from __future__ import annotations

import torch
from helpers import detect_config
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import batched_nms

import lstmdet
from lstmdet.export.graph import DetectionPostprocess, ExportNet, greedy_class_nms


def test_greedy_class_nms_keeps_what_batched_nms_keeps():
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        xy = torch.rand(2, 300, 2, generator=generator) * 60
        boxes = torch.cat([xy, xy + 4 + torch.rand(2, 300, 2, generator=generator) * 30], dim=-1)
        scores = torch.rand(2, 300, generator=generator)
        labels = torch.randint(0, 4, (2, 300), generator=generator)
        scores[:, ::7] = -1.0  # not candidates
        keep = greedy_class_nms(boxes, scores, labels, 0.5)
        for b in range(2):
            valid = torch.nonzero(scores[b] >= 0).flatten()
            want = valid[batched_nms(boxes[b][valid], scores[b][valid], labels[b][valid], 0.5)]
            assert sorted(torch.nonzero(keep[b]).flatten().tolist()) == sorted(want.tolist())


def test_postprocess_equals_the_heads_torchvision_postprocessing():
    for head in ("fcos", "retinanet"):
        torch.manual_seed(1)
        config = detect_config({"name": "identity"}, head=head, score_thresh=0.02, detections_per_img=20)
        model = lstmdet.create_model(config).eval()
        with torch.no_grad():
            for p in model.head.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        net = ExportNet(model)
        images = torch.rand(3, 3, 64, 64)
        with torch.no_grad():
            raw = net(images)
            feats, _ = model.features((images - net.mean) / net.std)
            image_list = ImageList(images, [(64, 64)] * 3)
            n = net.num_levels
            groups = [list(raw[i * n : (i + 1) * n]) for i in range(4)]
            limits = torch.tensor([[64.0, 64.0]])
            boxes, scores, labels, num = DetectionPostprocess(model.head)(*groups, limits)
            ref = model.head(feats, image_list)
        for i in range(3):
            n = int(num[i])
            assert n == len(ref[i]["scores"]) and (labels[i, n:] == -1).all()
            torch.testing.assert_close(scores[i, :n], ref[i]["scores"], atol=1e-6, rtol=0)
            torch.testing.assert_close(boxes[i, :n], ref[i]["boxes"], atol=1e-4, rtol=0)
            assert torch.equal(labels[i, :n], ref[i]["labels"])
