"""What the cache holds for torch tensors under each ``convert=`` mode, and torch.compile."""
import pytest

from getlocal import get_local

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@get_local("attn")
def softmax_attention(q, k):
    attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
    return attn @ k


@get_local("pair")
def returns_containers(x):
    pair = ([x, x * 2], {"double": x * 2, "label": "kept"}, (x,))
    return None


def _qk(dtype=torch.float32, device="cpu", grad=False):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 5, 4, generator=gen).to(device=device, dtype=dtype).requires_grad_(grad)
    k = torch.randn(2, 3, 5, 4, generator=gen).to(device=device, dtype=dtype)
    return q, k


def test_numpy_mode_gives_float32_arrays_for_bfloat16_and_float16():
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        get_local.clear()
        q, k = _qk(dtype)
        with get_local.capture():
            softmax_attention(q, k)
        (attn,) = get_local.cache["softmax_attention"]
        assert isinstance(attn, np.ndarray) and attn.dtype == np.float32 and attn.shape == (2, 3, 5, 5)
        expected = (q @ k.transpose(-2, -1)).softmax(dim=-1).float().numpy()
        np.testing.assert_array_equal(attn, expected)


def test_numpy_mode_detaches_tensors_that_require_grad():
    q, k = _qk(grad=True)
    with get_local.capture():
        softmax_attention(q, k)
    assert isinstance(get_local.cache["softmax_attention"][0], np.ndarray)


def test_cpu_mode_keeps_dtype_and_detaches():
    q, k = _qk(torch.bfloat16, grad=True)
    with get_local.capture("cpu"):
        softmax_attention(q, k)
    (attn,) = get_local.cache["softmax_attention"]
    assert isinstance(attn, torch.Tensor) and attn.dtype == torch.bfloat16 and not attn.requires_grad


def test_raw_mode_keeps_the_graph_for_gradients_of_attention():
    q, k = _qk(grad=True)
    with get_local.capture("raw"):
        softmax_attention(q, k)
    (attn,) = get_local.cache["softmax_attention"]
    assert attn.requires_grad
    attn[0, 0, 0, 1].backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_containers_of_tensors_are_converted_element_wise():
    x = torch.ones(2)
    with get_local.capture():
        returns_containers(x)
    (pair,) = get_local.cache["returns_containers"]
    listed, mapping, single = pair
    assert all(isinstance(v, np.ndarray) for v in listed)
    assert isinstance(mapping["double"], np.ndarray) and mapping["label"] == "kept"
    assert isinstance(single, tuple) and isinstance(single[0], np.ndarray)


def test_device_mode_captured_tensor_is_detached_view():
    q, k = _qk(grad=True)
    with get_local.capture("device"):
        softmax_attention(q, k)
    (attn,) = get_local.cache["softmax_attention"]
    assert isinstance(attn, torch.Tensor) and not attn.requires_grad and attn.device.type == "cpu"


def test_function_under_torch_no_grad_decorator_is_captured():
    @get_local("attn")
    @torch.no_grad()
    def forward(x):
        attn = x.softmax(-1)
        return attn.sum()

    x = torch.randn(3, requires_grad=True)
    with get_local.capture("raw"):
        forward(x)
    (attn,) = list(get_local.cache.values())[0]
    assert not attn.requires_grad  # it ran under no_grad, as without getlocal


def test_max_bytes_counts_tensor_bytes():
    q, k = _qk()
    with pytest.warns(RuntimeWarning, match="max_bytes"):
        with get_local.capture("cpu", max_bytes=2 * 3 * 5 * 5 * 4):
            softmax_attention(q, k)
            softmax_attention(q, k)
    assert len(get_local.cache["softmax_attention"]) == 1


@pytest.mark.parametrize("mode", ["cpu", "numpy"])
def test_torch_compile_records_the_same_maps_as_eager(mode):
    q, k = _qk()

    def model(q, k):
        return softmax_attention(q, k).relu() * 2

    with get_local.capture(mode):
        eager = model(q, k)
        eager_maps = list(get_local.cache["softmax_attention"])
        get_local.clear()
        compiled = torch.compile(model, backend="eager")
        out = compiled(q, k)
        out = compiled(q, k)  # the second call runs the cached compiled graph
    torch.testing.assert_close(out, eager)
    maps = get_local.cache["softmax_attention"]
    assert len(maps) == 2
    for got in maps:
        assert type(got) is type(eager_maps[0])
        np.testing.assert_allclose(np.asarray(got), np.asarray(eager_maps[0]), rtol=0, atol=1e-6)


def test_torch_compile_fullgraph_raises_instead_of_silently_capturing_nothing():
    q, k = _qk()

    def model(q, k):
        return softmax_attention(q, k) * 2

    with get_local.capture("cpu"):
        with pytest.raises(Exception, match="getlocal is capturing locals of softmax_attention"):
            torch.compile(model, backend="eager", fullgraph=True)(q, k)


@needs_cuda
@pytest.mark.gpu
def test_cuda_bfloat16_capture_in_each_mode():
    q, k = _qk(torch.bfloat16, device="cuda")
    for mode, check in (
        ("numpy", lambda a: isinstance(a, np.ndarray) and a.dtype == np.float32),
        ("cpu", lambda a: a.device.type == "cpu" and a.dtype == torch.bfloat16),
        ("device", lambda a: a.device.type == "cuda" and a.dtype == torch.bfloat16),
    ):
        get_local.clear()
        with get_local.capture(mode):
            softmax_attention(q, k)
        assert check(get_local.cache["softmax_attention"][0]), mode


def test_compiled_timm_vit_records_every_block_like_eager():
    timm = pytest.importorskip("timm")
    from timm.layers import Attention

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=3).eval()
    for block in model.blocks:
        block.attn.fused_attn = False
    get_local("attn")(Attention.forward)
    image = torch.randn(1, 3, 32, 32)
    try:
        with get_local.capture("cpu"), torch.no_grad():
            eager_out = model(image)
            eager_maps = list(get_local.cache["Attention.forward"])
            get_local.clear()
            compiled_out = torch.compile(model, backend="eager")(image)
            compiled_maps = get_local.cache["Attention.forward"]
    finally:
        get_local.remove(Attention.forward)
    torch.testing.assert_close(compiled_out, eager_out)
    assert len(compiled_maps) == 3
    for got, want in zip(compiled_maps, eager_maps):
        torch.testing.assert_close(got, want)
    assert [c.owner for c in get_local.calls["Attention.forward"]] == [b.attn for b in model.blocks]
