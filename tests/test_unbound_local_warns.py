"""A decorated local that a call never binds is said once (function, local, way out), and the call still returns."""
import warnings

import pytest
import timm
import torch

from getlocal import get_local


def _caught(run):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run()
    return result, [str(w.message) for w in caught if "without binding" in str(w.message)]


def test_an_unbound_local_warns_once_per_function_and_local_naming_both():
    def early(x):
        if x > 0:
            return x
        attn = x * 2
        return attn

    def other(x):
        if x > 0:
            return -x
        attn = x
        return attn

    get_local("attn")(early)
    get_local("attn")(other)
    with get_local.capture():
        results, said = _caught(lambda: [early(1), early(2), early(-1), other(3), other(4)])
    assert results == [1, 2, -2, -3, -4]
    assert len(said) == 2, said
    assert "early returned without binding its local 'attn'" in said[0]
    assert "other returned without binding its local 'attn'" in said[1]
    early_key, other_key = get_local.key_of(early), get_local.key_of(other)
    assert get_local.skipped == {early_key: {"attn": 2}, other_key: {"attn": 2}}  # still counted every time
    assert get_local.cache[early_key] == [-2]


def test_warnings_made_errors_never_break_the_call():
    def f(x):
        if x:
            return 1
        attn = 2
        return attn

    get_local("attn")(f)
    with get_local.capture():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert f(True) == 1
    assert get_local.skipped == {get_local.key_of(f): {"attn": 1}}


def test_timm_attention_with_fused_attn_on_names_fused_attn_and_the_vit_adapter():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=0).eval()
    for block in model.blocks:
        block.attn.fused_attn = True  # what timm builds by default: attn is never bound
    forward = type(model.blocks[0].attn).forward
    get_local("attn")(forward)
    try:
        with get_local.capture(), torch.no_grad():
            _, said = _caught(lambda: (model(torch.randn(1, 3, 32, 32)), model(torch.randn(1, 3, 32, 32))))
        assert len(said) == 1, said
        assert "Attention.forward" in said[0] and "'attn'" in said[0]
        assert "fused_attn = False" in said[0] and "getlocal.adapters.vit" in said[0]
        assert get_local.skipped[get_local.key_of(forward)] == {"attn": 4}
    finally:
        get_local.remove(forward)
