"""What the cache holds for torch tensors under each ``convert=`` mode, and torch.compile."""
import gc
import warnings
import weakref

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


# -- memory the cache keeps alive ------------------------------------------------


@get_local("row")
def first_row(big):
    row = big[:1]
    return 0


def test_max_bytes_counts_the_whole_storage_a_kept_view_holds():
    bigs = [torch.zeros(256, 1024) for _ in range(10)]  # 1 MiB each; a row of one is 4 KiB
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with get_local.capture("device", max_bytes=3 * 2**20):
            for big in bigs:
                first_row(big)
    kept = get_local.cache["first_row"]
    assert [row.data_ptr() for row in kept] == [big.data_ptr() for big in bigs[-3:]]


def test_views_of_one_storage_count_it_once():
    big = torch.zeros(256, 1024)
    with get_local.capture("device", max_bytes=2**20 + 1):
        for _ in range(5):
            first_row(big)
    assert len(get_local.cache["first_row"]) == 5


@pytest.mark.parametrize("mode", ["numpy", "cpu"])
def test_copying_modes_keep_only_the_view_not_the_tensor_it_views(mode):
    big = torch.zeros(256, 1024)
    alive = weakref.ref(big)
    with get_local.capture(mode, max_bytes=2**20):
        for _ in range(10):
            first_row(big)
    del big
    gc.collect()
    assert alive() is None
    assert len(get_local.cache["first_row"]) == 10


# -- torch.func transforms -----------------------------------------------------


@get_local("doubled")
def double_and_sum(x):
    doubled = x * 2
    return doubled.sum()


@pytest.mark.parametrize("mode", ["numpy", "cpu", "device"])
def test_vmap_stores_the_whole_batch_as_a_real_value(mode):
    x = torch.arange(6.0).reshape(3, 2)
    with get_local.capture(mode):
        out = torch.func.vmap(double_and_sum)(x)
    torch.testing.assert_close(out, torch.tensor([2.0, 10.0, 18.0]))
    (entry,) = get_local.cache["double_and_sum"]
    got = torch.as_tensor(entry)
    assert got.shape == (3, 2)
    torch.testing.assert_close(got + 0, x * 2)  # a real tensor: arithmetic works outside vmap


def test_vmap_over_a_later_dimension_stores_the_batch_first():
    x = torch.arange(6.0).reshape(2, 3)
    with get_local.capture("cpu"):
        torch.func.vmap(double_and_sum, in_dims=1)(x)
    torch.testing.assert_close(get_local.cache["double_and_sum"][0], (x * 2).T)


def test_grad_stores_the_real_value():
    with get_local.capture("numpy"):
        grad = torch.func.grad(double_and_sum)(torch.ones(2))
    torch.testing.assert_close(grad, torch.full((2,), 2.0))
    np.testing.assert_array_equal(get_local.cache["double_and_sum"][0], [2.0, 2.0])


def test_raw_mode_refuses_a_vmap_wrapper_and_the_call_still_returns():
    with pytest.warns(RuntimeWarning, match="raw.*vmap"):
        with get_local.capture("raw"):
            out = torch.func.vmap(double_and_sum)(torch.ones(3, 2))
    torch.testing.assert_close(out, torch.full((3,), 4.0))
    assert "double_and_sum" not in get_local.cache
    assert get_local.skipped == {"double_and_sum": {"doubled": 1}}


# -- torch.compile before activate ---------------------------------------------


class _Scaled(torch.nn.Module):
    def forward(self, x):
        attn = x.softmax(-1)
        return attn * 2


def test_compiling_before_activate_warns_and_reset_makes_capture_work():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), _Scaled())
    compiled = torch.compile(model, backend="eager")
    x = torch.ones(2, 4)
    compiled(x)
    get_local("attn")(_Scaled.forward)
    try:
        with pytest.warns(RuntimeWarning, match=r"_Scaled\.forward before get_local\.activate\(\).*torch\.compiler\.reset"):
            get_local.activate()
        compiled(x)
        assert "_Scaled.forward" not in get_local.cache  # what the warning is about
        torch.compiler.reset()
        compiled(x)
        assert len(get_local.cache["_Scaled.forward"]) == 1
    finally:
        get_local.remove(_Scaled.forward)
        torch.compiler.reset()


def test_activating_before_compiling_does_not_warn():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), _Scaled())
    get_local("attn")(_Scaled.forward)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            get_local.activate()
        torch.compile(model, backend="eager")(torch.ones(2, 4))
        assert len(get_local.cache["_Scaled.forward"]) == 1
    finally:
        get_local.remove(_Scaled.forward)
        torch.compiler.reset()
