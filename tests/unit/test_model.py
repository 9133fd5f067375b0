"""Model assembly: parts fit or fail early naming both; predictions are in original-image pixels."""

from __future__ import annotations

import pytest
import torch
from helpers import classify_config, detect_config

import lstmdet
from lstmdet.errors import AssemblyError, ConfigError, LstmdetError


def test_classify_model_losses_and_predictions():
    model = lstmdet.create_model(classify_config({"name": "bilstm", "hidden": 8}))
    images = torch.rand(4, 3, 28, 28)
    model.train()
    losses = model(images, [{"labels": torch.tensor(i)} for i in range(4)])
    assert set(losses) == {"loss_cls"} and losses["loss_cls"].ndim == 0
    preds = model.predict([torch.rand(3, 40, 30), torch.rand(3, 28, 28)])  # resized to 28x28
    assert len(preds) == 2
    assert preds[0]["scores"].shape == (10,) and torch.isclose(preds[0]["scores"].sum(), torch.tensor(1.0))
    assert preds[0]["labels"].shape == () and preds[0]["labels"] == preds[0]["scores"].argmax()


def test_detect_predictions_are_mapped_back_to_original_pixels():
    model = lstmdet.create_model(detect_config({"name": "bilstm", "hidden": 16}, score_thresh=0.0))
    big, small = torch.rand(3, 128, 256), torch.rand(3, 64, 64)
    preds = model.predict([big, small])
    boxes = preds[0]["boxes"]
    assert boxes.shape[1] == 4 and len(boxes) > 0
    assert boxes[:, 2].max() <= 256 and boxes[:, 3].max() <= 128
    assert boxes[:, 2].max() > 64  # the 64-pixel network frame was scaled back up
    assert preds[1]["boxes"][:, 2:].max() <= 64


def test_train_mode_needs_targets():
    model = lstmdet.create_model(detect_config({"name": "identity"}))
    model.train()
    with pytest.raises(LstmdetError, match="training mode"):
        model([torch.rand(3, 64, 64)])


def test_clips_flow_through_convlstm_and_streaming_matches_whole_clip():
    torch.manual_seed(0)
    model = lstmdet.create_model(detect_config({"name": "convlstm", "hidden": 32}, score_thresh=0.0)).eval()
    assert model.stateful
    clips = torch.rand(2, 4, 3, 64, 64)
    whole = model.predict(clips)
    assert len(whole) == 2 and len(whole[0]) == 4
    state = None
    for t in range(4):
        step, state = model.predict_step([clips[0, t], clips[1, t]], state)
        for b in range(2):
            torch.testing.assert_close(step[b]["scores"], whole[b][t]["scores"], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(step[b]["boxes"], whole[b][t]["boxes"], atol=1e-3, rtol=1e-4)


def test_level_mismatch_names_both_parts():
    config = detect_config({"name": "identity"})
    del config["model"]["neck"]  # c2 has 32 channels, c3 32: make them differ
    config["model"]["backbone"]["widths"] = [16, 24, 32]
    with pytest.raises(AssemblyError) as info:
        lstmdet.create_model(config)
    message = str(info.value)
    assert "head 'fcos'" in message and "backbone 'small_cnn'" in message and "neck" in message


def test_unknown_level_is_named():
    config = detect_config({"name": "bilstm", "levels": ["c9"]})
    with pytest.raises(AssemblyError, match=r"model.encoder.levels names \['c9'\].*c2.*c3"):
        lstmdet.create_model(config)


def test_head_task_must_match():
    config = classify_config({"name": "identity"})
    config["model"]["head"] = {"name": "fcos", "num_classes": 10}
    with pytest.raises(AssemblyError, match=r"does task 'detect'.*task is 'classify'"):
        lstmdet.create_model(config)


def test_unknown_component_and_bad_option_name_the_field():
    with pytest.raises(ConfigError) as info:
        lstmdet.create_model(classify_config({"name": "gru"}))
    assert info.value.field == "model.encoder.name" and "bilstm" in str(info.value)
    with pytest.raises(ConfigError) as info:
        lstmdet.create_model(classify_config({"name": "lstm", "hiden": 3}))
    assert info.value.field == "model.encoder.hiden" and "hidden" in str(info.value)  # the unknown key itself
    with pytest.raises(ConfigError) as info:
        lstmdet.create_model(classify_config({"name": "lstm", "scan": "diagonal"}))
    assert info.value.field == "model.encoder" and "diagonal" in str(info.value)


def test_encoder_applies_only_to_chosen_levels():
    config = detect_config({"name": "bilstm", "hidden": 16, "levels": ["c3"]})
    model = lstmdet.create_model(config)
    assert list(model.encoders) == ["c3"]
    feats, state = model.features(torch.rand(2, 3, 64, 64))
    assert feats["c2"].shape == (2, 32, 16, 16) and feats["c3"].shape == (2, 32, 8, 8)
    assert state == {"c3": None}


def test_rows_backbone_width_must_match_the_input_size(tmp_path):
    """`rows` without `input: {size: 28}` used to fail only at the first forward, inside the backbone."""
    config = {
        "task": "classify",
        "model": {
            "backbone": {"name": "rows", "width": 28},
            "encoder": {"name": "lstm", "hidden": 8, "scan": "cols"},
            "head": {"name": "classifier", "num_classes": 10},
        },
    }
    with pytest.raises(AssemblyError, match=r"model\.backbone\.width is 28 but model\.input\.size resizes images to "
                       r"224x224.*set model\.input\.size to 28"):  # fmt: skip
        lstmdet.create_model(config)
    assert lstmdet.create_model({**config, "model": {**config["model"], "input": {"size": [20, 28]}}})
    detect = {**config, "task": "detect", "model": {**config["model"], "head": {"name": "fcos", "num_classes": 2}}}
    with pytest.raises(AssemblyError, match=r"detection resizes images to varying widths"):
        lstmdet.create_model(detect)

    import yaml
    from helpers import run_cli

    path = tmp_path / "rows.yaml"
    path.write_text(yaml.safe_dump({**config, "data": {"train": {"name": "mnist_idx", "images": 8}}}))
    result = run_cli("train", str(path), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "model.backbone.width" in result.stderr and "model.input.size" in result.stderr
