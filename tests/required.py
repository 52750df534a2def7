"""Skip an adapter's tests where its libraries are missing, unless the environment says they must run.

``GETLOCAL_REQUIRE_ADAPTERS=openvla,vit`` (set by tests/matrix.sh for each pinned
stack) turns a skip of those adapters' tests into a failure: a leg whose
pinned libraries do not import must not pass by running nothing.
"""
import importlib
import os

import pytest

REQUIRED = frozenset(filter(None, os.environ.get("GETLOCAL_REQUIRE_ADAPTERS", "").replace(" ", "").split(",")))


def import_or_skip(adapter: str, module: str):
    """The module, or a skip of the calling test module; an ImportError when ``adapter`` is required."""
    if adapter in REQUIRED:
        return importlib.import_module(module)
    return pytest.importorskip(module)


def attention_interface() -> bool:
    """Whether transformers has its attention-interface functions (>= 4.48), which PaliGemma/Pi0's fast mode reads."""
    try:
        from transformers.integrations import sdpa_attention  # noqa: F401
        from transformers.models.llama.modeling_llama import eager_attention_forward  # noqa: F401
    except ImportError:
        return False
    return True


def skip_unless(adapter: str, condition: bool, reason: str) -> None:
    """Skip the calling test (or, at module level, the module) unless ``condition``; fail when ``adapter`` is required."""
    if condition:
        return
    if adapter in REQUIRED:
        pytest.fail(f"GETLOCAL_REQUIRE_ADAPTERS names {adapter!r}, but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)
