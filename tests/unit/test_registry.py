"""Registry, registrar and plugin manager: duplicates, unknown names, block list, entry points."""

from __future__ import annotations

from importlib.metadata import distribution

import pytest
import torch

import lstmdet
from lstmdet import hookimpl
from lstmdet.errors import DuplicateComponentError, LstmdetError, UnknownComponentError, UnknownOptionError
from lstmdet.manager import DEFAULT_PLUGINS, build_plugin_manager, build_registry, current_registry
from lstmdet.registry import KINDS, ComponentRegistry, Entry, Option, Registrar


def _factory(in_channels: int, *, hidden: int = 8) -> dict:
    return {"in_channels": in_channels, "hidden": hidden}


class _PluginA:
    @hookimpl
    def lstmdet_register_encoders(self, registry: Registrar) -> None:
        registry.add("shared_name", _factory)


class _PluginB:
    @hookimpl
    def lstmdet_register_encoders(self, registry: Registrar) -> None:
        registry.add("shared_name", _factory)


def test_builtin_plugins_are_the_distributions_entry_points():
    declared = {ep.name for ep in distribution("lstmdet").entry_points if ep.group == "lstmdet"}
    assert declared == set(DEFAULT_PLUGINS)


def test_every_kind_has_builtins():
    listing = lstmdet.components()
    assert set(listing) == set(KINDS)
    assert {"resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large", "vgg16"} <= set(
        listing["backbones"]
    )
    assert {"small_cnn", "rows"} <= set(listing["backbones"])
    assert {"identity", "lstm", "bilstm", "convlstm"} <= set(listing["encoders"])
    assert {"classifier", "fcos", "retinanet"} <= set(listing["heads"])
    assert listing["encoders"]["convlstm"] == "encoders_convlstm"


def test_duplicate_name_names_both_plugins():
    pm = build_plugin_manager(disabled=[], extra_plugins=[("plugin_a", _PluginA()), ("plugin_b", _PluginB())])
    with pytest.raises(DuplicateComponentError) as info:
        build_registry(pm)
    assert "plugin_a" in str(info.value) and "plugin_b" in str(info.value)
    assert "'shared_name'" in str(info.value)


def test_duplicate_of_a_builtin_is_refused():
    class Clash:
        @hookimpl
        def lstmdet_register_encoders(self, registry):
            registry.add("bilstm", _factory)

    pm = build_plugin_manager(disabled=[], extra_plugins=[("clash", Clash())])
    with pytest.raises(DuplicateComponentError, match=r"encoders_lstm.*clash|clash.*encoders_lstm"):
        build_registry(pm)


def test_unknown_name_lists_available_and_hints_at_missing_plugin():
    with pytest.raises(UnknownComponentError) as info:
        current_registry().get("encoders", "gru_sweep")
    message = str(info.value)
    assert "encoder 'gru_sweep'" in message
    for name in ("bilstm", "convlstm", "identity", "lstm"):
        assert name in message
    assert "plugin" in message and "not be installed" in message


def test_unknown_kind_is_clear():
    with pytest.raises(LstmdetError, match="kinds are: backbones, encoders, heads, datasets"):
        ComponentRegistry().get("necks", "fpn")


def test_create_component_reports_accepted_options():
    with pytest.raises(LstmdetError) as info:
        lstmdet.create_component("encoder", "bilstm", 16, hiden=3)
    assert "hidden" in str(info.value) and "layers" in str(info.value)


def test_create_component_builds_a_module():
    encoder = lstmdet.create_component("encoders", "bilstm", 16, hidden=8)
    assert encoder.out_channels == 16


def test_registrar_rejects_bad_entries():
    registry = ComponentRegistry()
    with pytest.raises(LstmdetError, match="invalid name"):
        Registrar(registry, "heads", "p").add("", _factory)
    with pytest.raises(LstmdetError, match="non-callable"):
        Registrar(registry, "heads", "p").add("h", 3)


def test_block_list_from_environment(monkeypatch):
    monkeypatch.setenv("LSTMDET_DISABLE_PLUGINS", " encoders_convlstm , heads_detection")
    listing = lstmdet.components()
    assert "convlstm" not in listing["encoders"] and "fcos" not in listing["heads"]
    assert "bilstm" in listing["encoders"]
    with pytest.raises(UnknownComponentError, match="LSTMDET_DISABLE_PLUGINS"):
        current_registry().get("encoders", "convlstm")
    monkeypatch.delenv("LSTMDET_DISABLE_PLUGINS")
    assert "convlstm" in lstmdet.components()["encoders"]


def test_misspelt_hook_names_the_plugin_and_the_hook():
    """pluggy would silently never call a hook nobody specified; the manager refuses it (check_pending)."""

    class Misspelt:
        @hookimpl
        def lstmdet_register_encoder(self, registry):  # missing "s"
            registry.add("never_seen", torch.nn.Identity)

    with pytest.raises(LstmdetError) as info:
        build_plugin_manager(disabled=[], extra_plugins=[("my_gru", Misspelt())])
    message = str(info.value)
    assert "plugin 'my_gru'" in message and "'lstmdet_register_encoder'" in message
    assert "did you mean 'lstmdet_register_encoders'" in message and "LSTMDET_DISABLE_PLUGINS=my_gru" in message


def test_optional_hooks_of_other_projects_are_allowed():
    class Optional:
        @hookimpl(optionalhook=True)
        def lstmdet_some_future_hook(self):
            return None

    build_plugin_manager(disabled=[], extra_plugins=[("future", Optional())])


def test_assembly_arguments_reach_only_factories_that_name_them_and_never_come_from_a_config():
    registry = current_registry()
    levels = [lstmdet.FeatureInfo("c3", 32, 8)]
    fcos = registry.create_from_spec("heads", {"name": "fcos"}, "model.head", 32, 2, context={"feature_info": levels})
    assert fcos.feature_info == tuple(levels)
    classifier = registry.create_from_spec(
        "heads", {"name": "classifier"}, "model.head", 32, 2, context={"feature_info": levels}
    )  # takes no feature_info: built without it
    assert classifier.task == "classify"
    with pytest.raises(LstmdetError, match=r"model\.head\.feature_info: is set by model assembly"):
        registry.create_from_spec(
            "heads", {"name": "fcos", "feature_info": []}, "model.head", 32, 2, context={"feature_info": levels}
        )
    assert "feature_info" not in registry.get("heads", "fcos").options()


def test_entries_describe_their_options_and_task():
    def head(in_channels, num_classes, *, feature_info=None, depth: int = 2, mode="a"):
        return None

    entry = Entry("heads", "plain", head, "third_party")
    assert entry.option_details() == [Option("depth", False, 2, "int"), Option("mode", False, "a", "")]
    assert entry.options() == ["depth", "mode"]
    assert entry.given_by_lstmdet() == ["in_channels", "num_classes", "feature_info"]
    assert entry.task is None  # a plain function declares no task
    head.task = "detect"
    assert entry.task == "detect"
    assert Entry("datasets", "d", lambda root, n=3: None, "p").option_details()[0] == Option("root", True, None, "")


def test_unknown_option_is_named_alone_with_the_closest_accepted_one():
    with pytest.raises(UnknownOptionError) as info:
        lstmdet.create_component("encoders", "bilstm", 16, hidden=8, hiden=3)
    assert info.value.option == "hiden"
    assert str(info.value) == (
        "encoder 'bilstm' has no option 'hiden' (did you mean 'hidden'?); accepted options: hidden, layers, scan, init"
    )


def test_unknown_component_suggests_the_closest_name():
    with pytest.raises(UnknownComponentError, match=r"unknown encoder 'bilstn' \(did you mean 'bilstm'\?\)"):
        current_registry().get("encoders", "bilstn")


@pytest.mark.parametrize(
    ("blocked", "hint"), [("nosuch", ""), ("heads_detecton", " (did you mean 'heads_detection'?)")]
)
def test_a_block_list_name_that_matches_no_plugin_is_reported(monkeypatch, blocked, hint):
    monkeypatch.setenv("LSTMDET_DISABLE_PLUGINS", f"encoders_convlstm,{blocked}")
    with pytest.raises(LstmdetError) as info:
        current_registry()
    message = str(info.value)
    assert message.startswith(f"LSTMDET_DISABLE_PLUGINS names '{blocked}', which is not an installed plugin{hint}; ")
    assert all(name in message for name in DEFAULT_PLUGINS)
    with pytest.raises(LstmdetError, match="'nosuch', which is not an installed plugin"):
        build_plugin_manager(disabled=["nosuch"])
    build_plugin_manager(disabled=["my_gru"], extra_plugins=[("my_gru", object())])  # an extra plugin's name is known
