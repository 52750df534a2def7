"""What a user sees of an adapter module: bound functions with real signatures and docs, and its spec as data."""
import inspect

import pytest

from getlocal.adapters import openvla, paligemma, vit
from required import attention_interface, skip_unless

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


def test_the_action_expert_is_the_gemma_beside_a_paligemma_whatever_the_module_names_say():
    import torch

    skip_unless("paligemma", attention_interface(), "tiny.pi0 needs transformers >= 4.48 (PaliGemma, Gemma's "
                "eager_attention_forward)")

    from getlocal.adapters import tiny

    pi0 = tiny.pi0()
    box = torch.nn.Module()  # names that a rule on paths would get wrong both ways
    box.expert_model = pi0.paligemma
    box.paligemma_language = pi0.gemma_expert
    tower, modules = paligemma._ADAPTER.spec.tower, dict(box.named_modules())

    def towers(start, modules):
        return {tower(m, p, modules) for p, m in modules.items() if p.startswith(start) and p.endswith("self_attn")}

    assert towers("expert_model.model.language_model", modules) == {"language"}
    assert towers("paligemma_language", modules) == {"expert"}
    alone = dict(pi0.gemma_expert.named_modules())  # a Gemma with no PaliGemma beside it is a language model
    assert towers("", alone) == {"language"}
