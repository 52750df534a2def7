"""Rollout, gradient rollout and Chefer relevance: reference values, an independent timm reimplementation,
a model with a known dependency, and the errors a wrong input meets."""
import gc
import weakref

import numpy as np
import pytest
import torch
from torch import nn

from getlocal import GetLocalError, explain, get_local
from getlocal.maps import AttentionMap, AttentionMaps, Segment, TokenLayout

LAYOUT = TokenLayout([Segment("cls", 0, 1), Segment("image", 1, 5, grid=(2, 2))])


def _softmax_maps(layers=3, batch=2, heads=3, n=5, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(layers):
        x = rng.normal(size=(batch, heads, n, n)) * 2
        e = np.exp(x - x.max(-1, keepdims=True))
        out.append(e / e.sum(-1, keepdims=True))
    return out


# -- reference values on synthetic maps ------------------------------------------------


@pytest.mark.parametrize("fusion", explain.HEAD_FUSIONS)
@pytest.mark.parametrize("residual", [True, False])
def test_identity_maps_roll_out_to_the_identity(fusion, residual):
    r = explain.rollout([np.eye(6)[None, None].repeat(2, 1)] * 4, head_fusion=fusion, residual=residual)
    assert np.array_equal(r.values[0], np.eye(6))


def test_uniform_maps_roll_out_to_uniform_rows_without_the_residual_term():
    r = explain.rollout([np.full((1, 2, 5, 5), 0.2)] * 3, residual=False, keys=LAYOUT)
    assert np.allclose(r.values, 0.2, atol=1e-15)
    assert np.allclose(r.grid(), 0.2) and np.allclose(r.even, 0.2)


def test_uniform_maps_with_the_residual_term_keep_half_per_layer_on_the_diagonal():
    # (0.5 U + 0.5 I)^L = (1 - 0.5^L) U + 0.5^L I, since U @ U = U and U @ I = U
    for layers in (1, 2, 5):
        r = explain.rollout([np.full((1, 2, 5, 5), 0.2)] * layers)
        expected = (1 - 0.5**layers) * np.full((5, 5), 0.2) + 0.5**layers * np.eye(5)
        assert np.allclose(r.values[0], expected, atol=1e-12)


@pytest.mark.parametrize("fusion", explain.HEAD_FUSIONS)
@pytest.mark.parametrize("discard", [0.0, 0.5])
def test_every_rollout_row_sums_to_one(fusion, discard):
    r = explain.rollout(_softmax_maps(), head_fusion=fusion, discard=discard)
    assert r.values.shape == (2, 5, 5)
    assert np.allclose(r.values.sum(-1), 1.0, atol=1e-12)
    assert np.allclose(r.last_layer.sum(-1), 1.0, atol=1e-12)


def test_a_chain_of_one_hot_maps_composes_exactly():
    rng = np.random.default_rng(1)
    perms = [np.eye(7)[rng.permutation(7)] for _ in range(4)]
    r = explain.rollout([p[None, None] for p in perms], residual=False)
    expected = perms[3] @ perms[2] @ perms[1] @ perms[0]
    assert np.array_equal(r.values[0], expected)
    # each row lands on exactly one token: the one the chain of arg-maxes reaches
    for i in range(7):
        j = i
        for p in reversed(perms):
            j = int(np.argmax(p[j]))
        assert r.values[0, i, j] == 1.0


HEADS = np.array([[[1.0, 0.0, 0.0], [0.2, 0.8, 0.0], [0.5, 0.25, 0.25]],
                  [[0.6, 0.4, 0.0], [0.2, 0.2, 0.6], [0.5, 0.5, 0.0]]])[None]


@pytest.mark.parametrize("fusion, expected", [
    ("mean", [[0.8, 0.2, 0.0], [0.2, 0.5, 0.3], [0.5, 0.375, 0.125]]),
    ("max", [[5 / 7, 2 / 7, 0.0], [0.125, 0.5, 0.375], [0.4, 0.4, 0.2]]),  # [1, .4, 0] / 1.4, ...
    ("min", [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [2 / 3, 1 / 3, 0.0]]),      # [.6, 0, 0] / .6, ...
])
def test_head_fusion_on_a_hand_made_two_head_map(fusion, expected):
    r = explain.rollout([HEADS], head_fusion=fusion, residual=False)
    assert np.allclose(r.values[0], expected, atol=1e-12)


def test_the_residual_term_is_half_the_map_plus_half_the_identity():
    r = explain.rollout([HEADS], head_fusion="mean")
    assert np.allclose(r.values[0], [[0.9, 0.1, 0.0], [0.1, 0.75, 0.15], [0.25, 0.1875, 0.5625]], atol=1e-12)


def test_discard_drops_the_smallest_off_diagonal_weights_of_each_row_never_the_diagonal():
    row = np.array([0.01, 0.3, 0.05, 0.6, 0.04])  # the diagonal (position 0) is the smallest of all
    a = np.tile(row, (5, 1))[None, None]
    r = explain.rollout([a], residual=False, discard=0.5, rows=0)  # floor(0.5 * 4) = 2 off-diagonal dropped
    kept = np.array([0.01, 0.3, 0.0, 0.6, 0.0])
    assert np.allclose(r.values[0, 0], kept / kept.sum(), atol=1e-12)


def test_rows_pick_by_kind_position_or_list():
    maps = _softmax_maps(batch=1)
    full = explain.rollout(maps, keys=LAYOUT).values[0]
    assert np.allclose(explain.rollout(maps, rows="cls", keys=LAYOUT).values[0], full[[0]])
    assert np.allclose(explain.rollout(maps, rows="image", keys=LAYOUT).values[0], full[1:])
    assert np.allclose(explain.rollout(maps, rows=[-1, 0]).values[0], full[[4, 0]])
    assert explain.rollout(maps, rows=-1).rows.tolist() == [4]


def test_exclude_removes_keys_renormalises_and_says_so():
    maps = _softmax_maps(batch=1)
    full = explain.rollout(maps, rows="cls", keys=LAYOUT).values[0, 0]
    r = explain.rollout(maps, rows="cls", exclude=["cls", 3], keys=LAYOUT)
    assert r.excluded == (0, 3)
    expected = full.copy()
    expected[[0, 3]] = 0
    assert np.allclose(r.values[0, 0], expected / expected.sum(), atol=1e-12)
    assert r.values[0, 0, [0, 3]].tolist() == [0.0, 0.0]
    assert np.isnan(r.grid()[1, 0]) and np.isfinite(r.grid()[0]).all()  # patch 3 of 1..4 is cell (1, 0)
    assert r.reach[0, 0] == 3 and np.isclose(r.even[0, 0], 1 / 3)
    assert "excluded [0, 3]" in repr(r)


def test_a_causal_row_can_reach_only_the_keys_up_to_itself():
    causal = np.tril(np.ones((5, 5)))
    causal = causal / causal.sum(-1, keepdims=True)
    r = explain.rollout([causal[None, None]] * 2, rows=[1, 4])
    assert r.reach[0].tolist() == [2, 5]
    assert np.all(r.values[0, 0, 2:] == 0)


def test_attention_maps_are_chained_in_layer_order_with_their_labels():
    arrays = _softmax_maps(batch=1)
    maps = AttentionMaps([AttentionMap(arrays[i], "vit", i, f"blocks.{i}.attn", 0, "encode", i, LAYOUT, LAYOUT)
                          for i in (2, 0, 1)])  # out of order on purpose
    r = explain.rollout(maps, rows="cls")
    assert np.allclose(r.values, explain.rollout(arrays, rows=0).values)
    assert (r.tower, r.step, r.phase, r.layers, r.keys) == ("vit", 0, "encode", [0, 1, 2], LAYOUT)


# -- errors -------------------------------------------------------------------------


def test_wrong_arguments_raise_naming_them():
    maps = _softmax_maps()
    with pytest.raises(GetLocalError, match="head_fusion"):
        explain.rollout(maps, head_fusion="median")
    with pytest.raises(GetLocalError, match="discard must be below 1"):
        explain.rollout(maps, discard=1.0)
    with pytest.raises(GetLocalError, match="no layout"):
        explain.rollout(maps, rows="cls")
    with pytest.raises(GetLocalError, match="no 'text' tokens"):
        explain.rollout(maps, rows="text", keys=LAYOUT)
    with pytest.raises(GetLocalError, match="every key"):
        explain.rollout(maps, exclude=[0, 1, 2, 3, 4])
    with pytest.raises(GetLocalError, match="square"):
        explain.rollout([np.full((1, 1, 2, 5), 0.2)])
    with pytest.raises(GetLocalError, match="maps is empty"):
        explain.rollout([])


def test_maps_of_two_towers_or_a_decode_step_are_refused_with_the_way_out():
    a = _softmax_maps(layers=1, batch=1)[0]
    two = AttentionMaps([AttentionMap(a, "dinov2", 0, "p", 0, "prefill", 0, LAYOUT, LAYOUT),
                         AttentionMap(a, "siglip", 0, "q", 0, "prefill", 1, LAYOUT, LAYOUT)])
    with pytest.raises(GetLocalError, match=r"maps.select\(tower='dinov2', step=0\)"):
        explain.rollout(two)
    decode = AttentionMap(a[:, :, -1:], "llm", 0, "p", 1, "decode", 0, LAYOUT.window(4, 5), LAYOUT)
    with pytest.raises(GetLocalError, match="every row of every layer"):
        explain.rollout(AttentionMaps([decode]))


def test_relevance_refuses_a_non_scalar_target_and_maps_outside_the_graph():
    a = torch.full((1, 1, 3, 3), 1 / 3, requires_grad=True)
    y = (a * torch.arange(3.0)).sum(-1)
    with pytest.raises(GetLocalError, match="pick one number"):
        explain.relevance(y, [a])
    with pytest.raises(GetLocalError, match="convert='raw'"):
        explain.relevance(y.sum(), [a.detach()])
    with pytest.raises(GetLocalError, match="method"):
        explain.relevance(y.sum(), [a], method="lrp")


# -- against an independent implementation on a timm ViT ---------------------------------


def _vit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=3).eval()


def _reference(model, image, target_class):
    """Rollout, gradient rollout and Chefer relevance from the formulas, with plain forward hooks (float64)."""
    captured = []

    def hook(module, inputs, output):
        output.retain_grad()  # the tensor that multiplies v: its .grad is d target / d A
        captured.append(output)

    for block in model.blocks:
        block.attn.fused_attn = False  # timm's fused kernel never builds the map
    handles = [block.attn.attn_drop.register_forward_hook(hook) for block in model.blocks]
    try:
        model(image)[0, target_class].backward()
    finally:
        for h in handles:
            h.remove()
        for block in model.blocks:
            block.attn.fused_attn = True
    n = captured[0].shape[-1]
    eye = torch.eye(n, dtype=torch.float64)

    def chain(fused_maps):
        r = eye.clone()
        for a in fused_maps:
            a = 0.5 * a + 0.5 * eye
            r = (a / a.sum(-1, keepdim=True)) @ r
        return r

    attn = [a.detach().double()[0] for a in captured]
    grad = [a.grad.double()[0] for a in captured]
    plain = chain([a.mean(0) for a in attn])
    weighted = [(g * a).clamp(min=0).mean(0) for g, a in zip(grad, attn)]
    gradient = chain(weighted)
    chefer = eye.clone()
    for w in weighted:
        chefer = chefer + w @ chefer
    return {"rollout": plain[0], "gradient rollout": gradient[0], "chefer": chefer[0] / chefer[0].sum()}


def test_rollout_and_gradient_rollout_equal_a_plain_torch_reimplementation_on_a_timm_vit(adapters_off):
    from getlocal.adapters import vit

    model = _vit()
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ref = _reference(model, image, target_class=7)
    with vit.capture(model, convert="raw") as maps:
        out = model(image)
    got = explain.rollout(maps, rows="cls")
    assert np.abs(got.values[0, 0] - ref["rollout"].numpy()).max() < 1e-6
    grad_rollout = explain.relevance(out[0, 7], maps, method="rollout", rows="cls")
    diff = np.abs(grad_rollout.values[0, 0] - ref["gradient rollout"].numpy()).max()
    assert diff < 1e-6, diff
    with vit.capture(model, convert="raw") as maps:
        out = model(image)
    chefer = explain.relevance(out[0, 7], maps, rows="cls")
    diff = np.abs(chefer.values[0, 0] - ref["chefer"].numpy()).max()
    assert diff < 1e-6, diff
    assert chefer.grid().shape == (2, 2) and got.grid().shape == (2, 2)
    assert not np.allclose(grad_rollout.values, got.values)  # the gradients changed something


def test_relevance_frees_the_graph_and_keeps_no_captured_tensor(adapters_off):
    from getlocal.adapters import vit

    model = _vit()
    with vit.capture(model, convert="raw") as maps:
        out = model(torch.randn(1, 3, 32, 32))
    target = out[0, 1]
    alive = [weakref.ref(m.array) for m in maps]
    result = explain.relevance(target, maps, rows="cls")
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        target.backward()  # the one autograd.grad call freed the graph's buffers
    del maps, out, target
    gc.collect()
    assert all(ref() is None for ref in alive)  # nothing in getlocal or the result holds the maps
    assert all(not isinstance(v, torch.Tensor) for v in vars(result).values())


# -- a model whose output depends on one known patch --------------------------------------


class _Forced(nn.Module):
    """Attention with weights forced by a fixed bias: layer 0 each token to itself, layer 1 [CLS] to one patch."""

    def __init__(self, bias):
        super().__init__()
        self.register_buffer("bias", bias)
        self.v = nn.Linear(8, 8)
        self.qk = nn.Linear(8, 8)

    @get_local("attn")
    def forward(self, x):
        q = self.qk(x)
        attn = (q @ x.transpose(-2, -1) * 0.01 + self.bias).softmax(-1)[:, None]  # [B, 1, N, N]
        return x + (attn[:, 0] @ self.v(x))


def test_relevance_and_rollout_peak_on_the_one_patch_the_output_depends_on():
    torch.manual_seed(0)
    n, patch = 5, 3  # [cls, 4 patches]; the [CLS] output reads patch 3 (grid cell (1, 0)) only
    self_only = torch.eye(n) * 30.0
    cls_to_patch = torch.eye(n) * 30.0
    cls_to_patch[0] = 0
    cls_to_patch[0, patch] = 30.0
    layers = nn.ModuleList([_Forced(self_only), _Forced(cls_to_patch)])
    head = nn.Linear(8, 1)
    x = torch.randn(1, n, 8, requires_grad=True)

    def forward():
        with get_local.capture(convert="raw") as cache:
            h = x
            for layer in layers:
                h = layer(h)
            return head(h[:, 0]).sum(), list(cache["_Forced.forward"])

    # the known dependency, checked on the model itself: of the patches, only x[patch] moves y
    y, maps = forward()
    dx = torch.autograd.grad(y, x)[0][0].abs().sum(-1)
    assert dx[[1, 2, 4]].max() < 1e-6 * dx[patch]
    for name in ("rollout", "gradient rollout", "chefer"):
        y, maps = forward()
        if name == "rollout":
            r = explain.rollout(maps, rows="cls", exclude="cls", keys=LAYOUT)
        else:
            r = explain.relevance(y, maps, method="chefer" if name == "chefer" else "rollout", rows="cls",
                                  exclude="cls", keys=LAYOUT)
        grid = r.grid()
        assert np.unravel_index(np.argmax(grid), grid.shape) == (1, 0), (name, grid)  # patch 3 of 1..4
        assert grid[1, 0] > 0.99, (name, grid)


@pytest.mark.parametrize("name", ["getlocal.explain", "getlocal.plot._explain"])
def test_the_docstring_examples_run(name):
    import doctest
    import importlib

    pytest.importorskip("matplotlib")
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


# -- every wrong argument ends in an error that names it ---------------------------------


class _Hostile:
    def __getattr__(self, name):
        raise RuntimeError(f"probed .{name}")

    def __len__(self):
        raise RuntimeError("probed len()")


WRONG = [None, "nonsense", "", float("nan"), float("inf"), -1, 0, 10**12, 2.5, True, np.zeros(0), np.zeros((0, 3)),
         np.random.default_rng(0).random((2, 3, 4, 5, 6)), [], [None], ["nonsense"], (1, 2, 3), {"nonsense": 1},
         slice(5, 1), object(), _Hostile()]


def _calls():
    import matplotlib.pyplot as plt

    from getlocal import plot

    maps = _softmax_maps(batch=1)
    r = explain.rollout(maps, rows="cls", keys=LAYOUT)
    below = explain.rollout(maps, rows="image", keys=LAYOUT)
    picture = np.zeros((28, 28, 3))
    fig, ax = plt.subplots()
    return {
        "rollout": (explain.rollout, {"maps": maps, "head_fusion": "max", "residual": True, "discard": 0.2,
                                      "rows": "cls", "exclude": [0], "keys": LAYOUT}),
        "compose": (explain.compose, {"top": r, "bottom": below, "camera": None}),
        "Explanation.grid": (r.grid, {"camera": None, "item": 0, "last_layer": False, "relative": True}),
        "Explanation.share": (r.share, {"kind": "image", "camera": None, "item": 0, "last_layer": False}),
        "plot.relevance_overlay": (plot.relevance_overlay, {"result": r, "image": picture, "camera": None, "item": 0,
                                                            "last_layer": False, "ax": ax, "pad_to_square": False,
                                                            "alpha": 0.5, "cbar": True}),
        "plot.relevance_figure": (plot.relevance_figure, {"result": r, "image": picture, "camera": None, "item": 0,
                                                          "pad_to_square": False, "alpha": 0.5, "panel_size": 2.0}),
    }


def test_wrong_arguments_to_every_public_function_end_in_an_error_that_names_them():
    import matplotlib.pyplot as plt

    escaped = []
    for name, (func, valid) in _calls().items():
        func(**valid)
        for parameter in valid:
            for wrong in WRONG:
                try:
                    func(**{**valid, parameter: wrong})
                except (GetLocalError, TypeError, ValueError) as exc:
                    if parameter not in str(exc) and not (isinstance(wrong, str) and repr(wrong) in str(exc)):
                        escaped.append(f"{name}({parameter}={wrong!r:.30}): {type(exc).__name__}: {exc}"[:250])
                except Exception as exc:  # noqa: BLE001 - what escapes is the finding
                    escaped.append(f"{name}({parameter}={wrong!r:.30}): {type(exc).__name__}: {exc}"[:250])
        plt.close("all")
    assert not escaped, f"{len(escaped)} escaped:\n" + "\n".join(escaped)


def test_rollout_holds_one_layers_maps_at_a_time_and_the_running_product_not_every_layer():
    import tracemalloc

    layers, heads, n = 12, 4, 256
    rng = np.random.default_rng(3)
    maps = []
    for _ in range(layers):
        a = rng.random((1, heads, n, n), dtype=np.float32)
        maps.append(a / a.sum(-1, keepdims=True))
    one_layer = heads * n * n * 8  # one layer's heads as float64: 2 MB; all twelve: 24 MB
    tracemalloc.start()
    try:
        r = explain.rollout(maps, rows=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"rollout's peak allocation: {peak / 2**20:.1f} MB; one layer's heads in float64: {one_layer / 2**20:.1f} MB, "
          f"all {layers}: {layers * one_layer / 2**20:.1f} MB")
    assert peak < 3 * one_layer
    assert np.allclose(r.values.sum(-1), 1.0)
