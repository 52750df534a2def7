"""How a captured value is stored: the ``convert=`` modes of ``activate``.

torch is never imported here: a value is a tensor only if torch is already in
``sys.modules`` and the value is an instance of its Tensor class.
"""
import sys
from typing import Any, Callable, Dict, List, Tuple, Union

from ._errors import GetLocalError

MODES = ("numpy", "cpu", "device", "raw")

# Types that are stored as they are in every mode, checked before anything else
# because most captured locals of instrumented training code are of these.
_PLAIN = (type(None), bool, int, float, complex, str, bytes)
PLAIN_TYPES = frozenset(_PLAIN)


def _tensor_type():
    torch = sys.modules.get("torch")
    return getattr(torch, "Tensor", None)


def is_tensor(value) -> bool:
    """Whether ``value`` is a torch tensor (False when torch was never imported)."""
    tensor = _tensor_type()
    return tensor is not None and isinstance(value, tensor)


def _outside_transforms(on_tensor):
    """``on_tensor`` made safe inside ``torch.func`` transforms (vmap, grad, jacrev, ...).

    There a local may be a wrapper that is only valid inside the transform, and
    every op, ``.numpy()`` included, goes through the transforms. So the
    conversion runs with them disabled, on the unwrapped tensor: under vmap the
    wrapper stands for the whole batch, and what is stored is the batch, with the
    vmapped dimension moved first.
    """
    def convert_tensor(t):
        torch = sys.modules["torch"]
        functorch = getattr(torch._C, "_functorch", None)
        if functorch is None or functorch.maybe_current_level() is None:
            return on_tensor(t)
        with torch._C._DisableFuncTorch():
            while functorch.is_functorch_wrapped_tensor(t):
                if functorch.is_batchedtensor(t):
                    t = functorch.get_unwrapped(t).movedim(functorch.maybe_get_bdim(t), 0)
                else:
                    t = functorch.get_unwrapped(t)
            return on_tensor(t)

    return convert_tensor


def _compact(t):
    """A CPU tensor that keeps alive only its own elements, not a larger tensor it views."""
    if t.device.type == "cpu" and t.untyped_storage().nbytes() > t.numel() * t.element_size():
        return t.clone()
    return t


def _to_numpy(t):
    torch = sys.modules["torch"]
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dtype in (torch.float16, torch.bfloat16):  # numpy has no bfloat16
        t = t.float()
    return _compact(t).numpy()


def _to_cpu(t):
    t = t.detach()
    return _compact(t.cpu() if t.device.type != "cpu" else t)


def _detach(t):
    return t.detach()


def _raw(value):
    if not is_tensor(value):
        return value
    functorch = getattr(sys.modules["torch"]._C, "_functorch", None)
    if functorch is not None and functorch.is_functorch_wrapped_tensor(value):
        raise GetLocalError(
            "convert='raw' keeps the tensor itself, and this one is a torch.func (vmap/grad) wrapper "
            "that is invalid outside the transform; use convert='numpy', 'cpu' or 'device', which store "
            "the whole batch"
        )
    return value


_TENSOR_CONVERTERS = {"numpy": _to_numpy, "cpu": _to_cpu, "device": _detach}


def converter(mode: Union[str, Callable[[Any], Any]]) -> Callable[[Any], Any]:
    """The function that turns one captured value into what the cache holds."""
    if callable(mode):
        return mode
    if mode == "raw":
        return _raw
    if not isinstance(mode, str) or mode not in _TENSOR_CONVERTERS:
        raise GetLocalError(
            f"activate(convert={mode!r}) is not a conversion; use one of "
            f"{', '.join(repr(m) for m in MODES)} or a callable that takes the value"
        )
    on_tensor = _outside_transforms(_TENSOR_CONVERTERS[mode])

    def convert(value):
        if isinstance(value, _PLAIN):
            return value
        tensor = _tensor_type()
        if tensor is None:
            return value
        if isinstance(value, tensor):
            return on_tensor(value)
        if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
            return type(value)(convert(v) for v in value)
        if type(value) is dict:
            return {k: convert(v) for k, v in value.items()}
        return value

    return convert


def storages(value) -> List[Tuple[Any, int]]:
    """``[(storage id, bytes), ...]``: the memory that arrays and tensors inside ``value`` keep alive.

    A view keeps its whole storage alive, so it counts the whole storage; two
    views of one storage count it once. Other objects count nothing.
    """
    found: Dict[Any, int] = {}
    pending = [value]
    while pending:
        value = pending.pop()
        if isinstance(value, _PLAIN):
            continue
        if isinstance(value, (list, tuple)):
            pending += value
        elif isinstance(value, Lazy):  # a map not computed yet counts what it keeps to compute it
            pending += value.parts()
        elif isinstance(value, dict):
            pending += value.values()
        else:
            sid, size = _storage(value)
            if size:
                found[sid] = size
    return list(found.items())


def _storage(value) -> Tuple[Any, int]:
    root = value
    while getattr(root, "base", None) is not None and not is_tensor(root):  # numpy views
        root = root.base
    if is_tensor(root):
        try:
            storage = root.untyped_storage()
            return ("tensor", str(storage.device), storage.data_ptr()), storage.nbytes()
        except Exception:  # wrappers and meta tensors have no plain storage
            return ("object", id(root)), root.numel() * root.element_size()
    size = getattr(root, "nbytes", None)
    if not isinstance(size, int):
        size = getattr(value, "nbytes", None)
        root = value
    return ("object", id(root)), size if isinstance(size, int) else 0


class Lazy:
    """A map not computed yet: ``shape`` is known, ``materialize()`` computes the array.

    ``AttentionMap.array`` computes it on first access and keeps the result;
    ``AttentionMap.compute()`` reads it through ``compute()``, which a Lazy
    that holds more than the map's inputs overrides to leave itself as it is.
    The adapters' ``mode='fast'`` stores the softmax inputs (query, key, mask,
    scale) this way instead of the map.
    """

    shape: Tuple[int, ...] = ()

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def materialize(self):
        """The array, which this Lazy may keep in place of what it held (it is read again as the array)."""
        raise NotImplementedError

    def compute(self):
        """The array for one read, without keeping it: what it holds stays as it is (default: ``materialize()``)."""
        return self.materialize()

    def parts(self) -> Tuple[Any, ...]:
        """The arrays and tensors it keeps alive (what ``max_bytes`` counts)."""
        return ()
