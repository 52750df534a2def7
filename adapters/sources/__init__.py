"""Attention sources: one module per library's attention, holding its targets, its switch and its rebuild.

A source is an object with ``targets()`` (the functions, and the local that
holds the post-softmax map), ``switch_globally(undo)`` (for models built
later), ``prepare(module, undo, built)`` (one module of a model already built),
``owns(owner)`` (whether a captured call is ours), and for ``mode='fast'``
``fast_targets(keeper)`` (``(function, locals, keep)``: what to read and how to
keep it, through ``_keep.Keep``) and ``check_fast(module, path)`` (refuse a
kernel it cannot rebuild). Like transformers' ``integrations/`` folder:

* ``timm``: timm's ViT ``Attention`` (fused or not) and its rebuild;
* ``transformers``: the attention-interface functions of transformers >= 4.48
  (``eager_attention_forward``, ``sdpa_attention_forward``), the eager switch
  through the config, and the rebuild of the sdpa kernel;
* ``llama_old``: Llama before 4.48 (OpenVLA pins 4.40.1), whose attention class
  is the kernel (``LlamaSdpaAttention``), and its rebuild.

The libraries are imported only when an adapter is activated.
"""
from typing import Any, Callable, List, Tuple

#: ``targets()``: ``[(function, local holding the post-softmax map)]``.
Targets = List[Tuple[Callable, str]]
#: ``fast_targets(keeper)``: ``[(function, locals to read, keep(owner, {local: value}))]``.
FastTargets = List[Tuple[Callable, Tuple[str, ...], Callable[[Any, dict], Any]]]
