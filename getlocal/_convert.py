"""How a captured value is stored: the ``convert=`` modes of ``activate``.

torch is never imported here: a value is a tensor only if torch is already in
``sys.modules`` and the value is an instance of its Tensor class.
"""
import sys
from typing import Any, Callable, Union

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


def _to_numpy(t):
    torch = sys.modules["torch"]
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dtype in (torch.float16, torch.bfloat16):  # numpy has no bfloat16
        t = t.float()
    return t.numpy()


def _to_cpu(t):
    t = t.detach()
    return t.cpu() if t.device.type != "cpu" else t


def _detach(t):
    return t.detach()


_TENSOR_CONVERTERS = {"numpy": _to_numpy, "cpu": _to_cpu, "device": _detach}


def converter(mode: Union[str, Callable[[Any], Any]]) -> Callable[[Any], Any]:
    """The function that turns one captured value into what the cache holds."""
    if callable(mode):
        return mode
    if mode == "raw":
        return _identity
    if mode not in _TENSOR_CONVERTERS:
        raise GetLocalError(
            f"activate(convert={mode!r}) is not a conversion; use one of "
            f"{', '.join(repr(m) for m in MODES)} or a callable that takes the value"
        )
    on_tensor = _TENSOR_CONVERTERS[mode]

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


def _identity(value):
    return value


def nbytes(value) -> int:
    """Bytes held by arrays and tensors inside ``value`` (other objects count 0)."""
    if isinstance(value, _PLAIN):
        return 0
    size = getattr(value, "nbytes", None)
    if isinstance(size, int):
        return size
    tensor = _tensor_type()
    if tensor is not None and isinstance(value, tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    return 0
