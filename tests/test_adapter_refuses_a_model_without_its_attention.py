"""An adapter given a model without the attention it knows raises at activate, naming what it looked for and the
model; openvla refuses a plain timm ViT (it would label its maps dinov2), naming getlocal.adapters.vit."""
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
pytest.importorskip("transformers")

from torch import nn  # noqa: E402

from getlocal import GetLocalError, get_local  # noqa: E402
from getlocal.adapters import openvla, paligemma, tiny, vit  # noqa: E402

pytestmark = pytest.mark.usefixtures("adapters_off")


def _plain_vit():
    return timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=0).eval()


@pytest.mark.parametrize("adapter, looked_for", [
    (openvla, r"timm\.[\w.]+\.Attention.*model_type is 'llama'"),  # timm 0.9 keeps Attention in its ViT module
    (vit, r"timm\.[\w.]+\.Attention"),
    (paligemma, r"model_type is 'paligemma' or 'siglip'"),
])
def test_a_model_without_the_adapters_attention_raises_naming_what_it_looked_for(adapter, looked_for):
    name = adapter.__name__.rsplit(".", 1)[1]
    if adapter is paligemma and not hasattr(__import__("transformers"), "PaliGemmaConfig"):
        pytest.skip("paligemma needs transformers >= 4.48 and refuses older ones first")
    with pytest.raises(GetLocalError, match=rf"{name}\.activate\(model\): Linear holds none of the attention "
                                            rf"{name} captures; it looked for .*{looked_for}"):
        adapter.activate(nn.Linear(2, 2))
    assert not adapter.is_active()
    assert not any(key.startswith(("Attention", "eager_attention")) for key in get_local.functions())


def test_capture_refuses_it_too_and_leaves_nothing_switched():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(GetLocalError, match="Sequential holds none of the attention vit captures"):
        with vit.capture(model):
            model(torch.ones(1, 2))
    assert not vit.is_active()


def test_openvla_refuses_a_plain_timm_vit_naming_the_vit_adapter():
    model = _plain_vit()
    fused = [b.attn.fused_attn for b in model.blocks]
    with pytest.raises(GetLocalError, match=r"VisionTransformer: .*not an OpenVLA / Prismatic model.*"
                                            r"getlocal\.adapters\.vit"):
        openvla.activate(model)
    assert not openvla.is_active()
    assert [b.attn.fused_attn for b in model.blocks] == fused  # nothing stays switched


def test_openvla_still_takes_the_whole_model_its_llama_alone_and_no_model():
    model = tiny.openvla()
    with openvla.capture(model) as maps, torch.no_grad():
        tiny.generate(model, *tiny.openvla_inputs(model), max_new_tokens=2)
    assert {"dinov2", "siglip", "llm"} <= set(maps.towers)
    llm = model.language_model
    with openvla.capture(llm) as maps, torch.no_grad():
        llm(input_ids=torch.tensor([[1, 5, 6]]))
    assert maps.towers == ["llm"]
    openvla.activate()  # no model: every model is switched at its first call, as before
    assert openvla.is_active()


def test_the_vit_adapter_still_takes_a_timm_vit():
    model = _plain_vit()
    with vit.capture(model) as maps, torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert len(maps) == 2
