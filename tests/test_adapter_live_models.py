"""Adapters activated without a model: live models are found without probing the heap's other objects."""
import re
import subprocess
import sys
import weakref

import pytest
from required import import_or_skip, skip_unless

torch = import_or_skip("vit", "torch")
timm = import_or_skip("vit", "timm")
transformers = import_or_skip("openvla", "transformers")

from getlocal import get_local  # noqa: E402
from getlocal.adapters import openvla, paligemma, tiny, vit  # noqa: E402
from getlocal.adapters.sources.transformers import eager_kernel  # noqa: E402


class _Gone:
    pass


class _ClassRaises:
    @property
    def __class__(self):
        raise RuntimeError("probed")


@pytest.fixture
def hostile_heap():
    """What a process holds after torch.compile and other libraries: objects that raise when probed."""
    gone = _Gone()
    held = [weakref.proxy(gone), _ClassRaises()]
    del gone
    with pytest.raises(ReferenceError):
        isinstance(held[0], torch.nn.Module)  # the proxy is dead: any probe through it raises
    yield held


pytestmark = pytest.mark.usefixtures("adapters_off")


def _vit():
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=0).eval()


def test_vit_activated_without_a_model_captures_beside_dead_weak_proxies(hostile_heap):
    model = _vit()
    vit.activate()
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    maps = vit.collect()
    assert [m.path for m in maps] == ["blocks.0.attn", "blocks.1.attn"]


def test_openvla_activated_without_a_model_captures_beside_dead_weak_proxies(hostile_heap):
    model = tiny.openvla(attn_implementation=None)
    pixels, ids = tiny.openvla_inputs(model)
    openvla.activate()
    with torch.no_grad():
        model(pixels, ids)
    maps = openvla.collect()
    assert maps.towers == ["dinov2", "siglip", "llm"]
    assert maps.select(tower="llm")[0].path == "language_model.model.layers.0.self_attn"


def test_paligemma_activated_without_a_model_captures_beside_dead_weak_proxies(hostile_heap):
    skip_unless("paligemma", hasattr(transformers, "PaliGemmaConfig"),
                f"transformers {transformers.__version__} has no PaliGemma (added in 4.41)")
    model = tiny.pi0()
    images, ids, state = tiny.pi0_inputs(model, cameras=1)
    paligemma.activate()
    model.sample_actions(images, ids, state, horizon=2, steps=1)
    maps = paligemma.collect()
    assert maps.steps == [(0, "prefix"), (1, "denoise")]
    assert maps.select(tower="expert")[0].path == "gemma_expert.model.layers.0.self_attn"


def test_a_model_loaded_before_activate_is_switched_at_its_first_call():
    model = tiny.openvla(attn_implementation=None)
    llm = model.language_model
    block = model.vision_backbone.featurizer.blocks[0].attn
    pixels, ids = tiny.openvla_inputs(model)
    openvla.activate()
    with torch.no_grad():
        model(pixels, ids)
    assert block.fused_attn is False and llm.config._attn_implementation == eager_kernel("sdpa")
    openvla.deactivate()
    assert llm.config._attn_implementation not in ("eager", eager_kernel("sdpa"))
    assert not torch.nn.modules.module._global_forward_pre_hooks  # nothing left on every module's call


def test_a_compiled_model_is_captured_when_activated_without_a_model():
    model = _vit()
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
        compiled(x)  # traced on the fused path first
    vit.activate()
    with torch.no_grad():
        got = compiled(x)
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())
    assert [m.path for m in vit.collect(model)] == ["blocks.0.attn", "blocks.1.attn"]
    assert get_local.is_active()


@pytest.mark.parametrize("adapter", [vit, openvla, paligemma], ids=lambda a: a.__name__.rsplit(".", 1)[-1])
def test_collect_of_an_adapter_never_activated_says_to_activate_it(adapter):
    # a fresh process: this one's adapters may have run already
    name = adapter.__name__.rsplit(".", 1)[-1]
    code = (f"from getlocal import GetLocalError\nfrom getlocal.adapters import {name}\n"
            f"try:\n    {name}.collect()\nexcept GetLocalError as exc:\n    print(exc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert re.search(rf"the {name} adapter was never activated.*call {name}\.activate\(\)", out.stdout), out
