"""What a user sees of an adapter module: bound functions with real signatures and docs, and its spec as data."""
import inspect

import pytest

from getlocal.adapters import openvla, paligemma, vit

ADAPTERS = {"vit": vit, "openvla": openvla, "paligemma": paligemma}
FUNCTIONS = ("activate", "capture", "collect", "deactivate", "is_active")


@pytest.mark.parametrize("name", ADAPTERS)
def test_each_function_is_the_registered_adapters_own_method_with_its_doc(name):
    module = ADAPTERS[name]
    adapter = module._ADAPTER
    for function in FUNCTIONS:
        bound = getattr(module, function)
        assert bound.__self__ is adapter and bound.__func__ is getattr(type(adapter), function)
        assert bound.__doc__ and bound.__doc__.strip(), function


@pytest.mark.parametrize("name", ADAPTERS)
def test_the_options_and_the_selection_are_keyword_only(name):
    module = ADAPTERS[name]
    for function in ("activate", "capture"):
        params = inspect.signature(getattr(module, function)).parameters
        assert list(params)[0] == "model"
        for keyword in ("convert", "max_calls", "max_bytes", "mode", "queries", "heads", "towers", "layers", "dtype"):
            assert params[keyword].kind is inspect.Parameter.KEYWORD_ONLY, (function, keyword)
    assert inspect.signature(module.collect).parameters["cameras"].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("module", [vit, openvla])
def test_an_adapter_without_cameras_refuses_them_as_python_refuses_a_keyword(module):
    with pytest.raises(TypeError, match="collect\\(\\) got an unexpected keyword argument 'cameras'"):
        module.collect(cameras=["wrist"])
    with pytest.raises(TypeError, match="capture\\(\\) got an unexpected keyword argument 'state_tokens'"):
        module.capture(state_tokens=1)
    assert not module.is_active()


def test_each_spec_declares_its_towers_phases_and_kinds():
    assert vit._ADAPTER.spec.towers == ("vit",)
    assert vit._ADAPTER.spec.phases == ("encode",)
    assert vit._ADAPTER.spec.kinds == ("cls", "register", "image")
    spec = openvla._ADAPTER.spec
    assert (spec.vision_towers, spec.language_towers, spec.expert_towers) == (("dinov2", "siglip"), ("llm",), ())
    assert spec.phases == ("encode", "prefill", "decode")
    assert {"bos", "text", "generated", "context", "padding"} <= set(spec.kinds) and "action" not in spec.kinds
    spec = paligemma._ADAPTER.spec
    assert spec.towers == ("vision", "language", "expert") and spec.expert_towers == ("expert",)
    assert spec.phases == ("encode", "prefill", "decode", "prefix", "denoise")
    assert {"state", "action", "generated"} <= set(spec.kinds)


def test_the_action_expert_is_the_module_openpi_names_gemma_expert_not_any_path_with_expert_in_it():
    tower = paligemma._ADAPTER.spec.tower
    owner = object()
    assert tower(owner, "paligemma_with_expert.gemma_expert.model.layers.0.self_attn", {}) == "expert"
    assert tower(owner, "gemma_expert.model.layers.0.self_attn", {}) == "expert"
    assert tower(owner, "paligemma_with_expert.paligemma.model.language_model.layers.0.self_attn", {}) == "language"
