"""LeRobot's SmolVLA (``SmolVLAPolicy``): every attention map of its SmolVLM vision encoder, VLM and action expert.

>>> from getlocal.adapters import smolvla
>>> # activate before (or after) the policy is built; lerobot must be installed
>>> smolvla.activate()                          # doctest: +SKIP
>>> # policy = SmolVLAPolicy.from_pretrained("lerobot/smolvla_base")
>>> # action = policy.select_action(batch)
>>> maps = smolvla.collect()                    # doctest: +SKIP
>>> smolvla.deactivate()

What is captured: LeRobot computes the attention of every VLM and expert
layer itself, in ``SmolVLMWithExpertModel.eager_attention_forward``, an
explicit softmax whose ``probs`` it never returns: that local is taken, for
every layer of every pass. One module makes all those calls, so each call's
place is read off the model as LeRobot runs it (``get_model_layers``,
``attention_mode``, ``self_attn_every_n_layers``) and checked against the
call's key count: the prefix pass (``sample_actions`` filling the cache) runs
every VLM layer over the prefix (tower ``'language'``, phase ``'prefix'``);
each denoising step (phase ``'denoise'``, ``AttentionMap.step`` 1, 2, ...)
runs every expert layer (tower ``'expert'``) with the action chunk as
queries, over prefix + actions in a self-attention layer and over the
prefix only in a cross-attention layer (its map's ``keys`` end before the
actions; its ``queries`` are the actions that follow them). The SmolVLM
vision encoder runs once per camera (tower ``'vision'``, one pass each, named
by LeRobot's image keys when every configured camera is in the batch); its
maps are ``attn_weights`` of ``modeling_smolvlm.eager_attention_forward``.

Token kinds of the prefix, in LeRobot's order (``embed_prefix``): per camera
its image tokens (``'image'``, after the connector's pixel shuffle; with
``add_image_special_tokens`` the tokens LeRobot puts around them,
``'context'``: SmolVLM's image markers, neither image nor language), the
language tokens (``'text'``; ``'padding'`` where the pad mask hides them in
every batch item), the ``'state'`` token; the denoising steps add
``'action'`` tokens. Only ``sample_actions``' passes are labelled (what
``select_action`` and ``predict_action_chunk`` run); ``collect()`` refuses
the training forward, whose calls it cannot place.

``mode='eager'`` switches the vision encoder to eager attention (its config,
read at call time); LeRobot's own attention is eager already.
``mode='fast'`` switches nothing: the vision maps are rebuilt from the sdpa
kernel's inputs and LeRobot's ``probs`` are read as computed, so the actions
and the VLM and expert maps are the untouched policy's, bit for bit (eager
mode's differ from them by the vision kernel's float32 rounding). A ``towers=``/``layers=`` selection is applied to LeRobot's
calls when they are labelled, not as they return (one module makes them all).
"""
from typing import Any, Dict, List, Optional

from getlocal import GetLocalError
from getlocal.maps import Segment, TokenLayout

from ._labels import Entry, camera_names, image_count, parent, square
from ._lifecycle import register
from ._spec import Spec
from .sources.transformers import EagerTransformers

#: The config ``model_type`` of SmolVLM's vision encoder (SmolVLA's VLM is SmolVLM2).
_VISION_TYPES = ("smolvlm_vision",)


def _lerobot_class():
    """LeRobot's ``SmolVLMWithExpertModel``, or a GetLocalError naming the install."""
    try:
        from lerobot.policies.smolvla.smolvlm_with_expert import SmolVLMWithExpertModel
    except ImportError as exc:
        raise GetLocalError(
            f"getlocal.adapters.smolvla captures LeRobot's SmolVLA, and lerobot's SmolVLA does not import here "
            f"({exc}); pip install lerobot (0.4.x on Python 3.10/3.11, 0.5 and later on Python 3.12)") from None
    return SmolVLMWithExpertModel


class _LeRobotAttention:
    """``SmolVLMWithExpertModel.eager_attention_forward``'s ``probs``: the same function in both modes.

    Nothing to switch: the function is LeRobot's only attention path for the
    VLM and the expert. ``classes`` is filled when the adapter is activated.
    """

    def __init__(self):
        self.classes = ()

    def targets(self):
        cls = _lerobot_class()
        self.classes = (cls,)
        return [(cls.eager_attention_forward, "probs")]

    def fast_targets(self, keeper):
        return [(func, (local,), keeper.keep_eager) for func, local in self.targets()]

    def switch_globally(self, undo) -> None:
        """Nothing: LeRobot's attention is an explicit softmax already."""

    def prepare(self, module, undo, built) -> None:
        """Nothing: see ``switch_globally``."""

    def check_fast(self, module, path: str = "") -> None:
        """Nothing to refuse: ``probs`` is computed whatever the mode."""

    def owns(self, owner) -> bool:
        return bool(self.classes) and isinstance(owner, self.classes)


def _vision_functions():
    try:
        from transformers.models.smolvlm import modeling_smolvlm
    except ImportError:
        _lerobot_class()  # without lerobot, that is what to install first
        import transformers

        raise GetLocalError(
            f"getlocal.adapters.smolvla needs a transformers with SmolVLM (4.50 or later); this is transformers "
            f"{transformers.__version__}: pip install lerobot, which pins the one its SmolVLA runs on") from None

    return [(modeling_smolvlm.eager_attention_forward, "attn_weights")]


_VISION = EagerTransformers(_VISION_TYPES, _vision_functions)
_LEROBOT = _LeRobotAttention()


def _tower(owner, path, modules) -> Optional[str]:
    """``'vision'``; None for LeRobot's attention, whose calls ``_calls`` places one by one."""
    return "vision" if _VISION.owns(owner) else None


def _plans(owner, names):
    """``{phase: [(tower, layer, path, cross)]}``: the calls one pass of LeRobot's ``forward`` makes, in order.

    The prefix pass (the cache filled) runs every VLM layer as self-attention;
    a denoising step runs each layer's expert (``get_model_layers`` leaves some
    out when the expert has fewer layers), as self-attention where LeRobot's
    ``forward`` calls ``forward_attn_layer``, else as cross-attention.
    """
    text, expert = owner.get_vlm_model().text_model, owner.lm_expert
    vlm_layers, expert_layers = owner.get_model_layers([text, expert])
    every = owner.self_attn_every_n_layers
    base = names.get(id(owner), ("",))[0]

    def path(module, fallback):
        return names.get(id(module), (f"{base}.{fallback}" if base else fallback,))[0]

    prefix = [("language", i, path(layer.self_attn, f"vlm.model.text_model.layers.{i}.self_attn"), False)
              for i, layer in enumerate(vlm_layers)]
    denoise = []
    for i, layer in enumerate(expert_layers):
        if layer is None:
            continue
        j = next(k for k, m in enumerate(expert.layers) if m is layer)
        cross = "cross" in owner.attention_mode and not (every > 0 and i % every == 0)
        denoise.append(("expert", j, path(layer.self_attn, f"lm_expert.layers.{j}.self_attn"), cross))
    return {"prefix": prefix, "denoise": denoise}


def _calls(entries: List[Entry], names: Dict[int, Any], options: Dict[str, Any]) -> Dict[str, Any]:
    """Place LeRobot's calls (tower, layer, path, cross) and add the policy's facts to the labelling options."""
    plans: Dict[int, Any] = {}
    run = None  # [owner, phase, calls placed] of the pass under way
    prefix = None  # the key count of the last prefix pass
    for e in entries:
        if not _LEROBOT.owns(e.owner):
            run = None  # a vision call: the next pass of LeRobot's model starts afresh
            continue
        plan = plans.setdefault(id(e.owner), _plans(e.owner, names))
        phase = "prefix" if e.queries == e.keys else "denoise"
        if run is None or run[0] is not e.owner or run[1] != phase or run[2] == len(plan[phase]):
            run = [e.owner, phase, 0]
        e.tower, e.layer, e.path, e.cross = plan[phase][run[2]]
        run[2] += 1
        if phase == "prefix":
            prefix = e.keys
        elif prefix is not None and e.keys != prefix + (0 if e.cross else e.queries):
            kind = "cross" if e.cross else "self"
            raise GetLocalError(
                f"smolvla.collect(): call {e.index} of SmolVLA's attention has {e.queries} queries over {e.keys} "
                f"keys where LeRobot's expert layer {e.layer} ({kind}-attention) over a {prefix}-token prefix has "
                f"{prefix + (0 if e.cross else e.queries)}: only the passes of sample_actions (select_action, "
                "predict_action_chunk) are labelled, not the training forward; capture those in their own "
                "smolvla.capture() block")
    owners = [e for e in entries if _LEROBOT.owns(e.owner)]
    if not owners:
        return options
    owner = owners[0].owner
    flow = parent(names.get(id(owner), ("",))[0], names.get(id(owner), ("", {}))[1], "vlm_with_expert")
    config = getattr(flow, "config", None)
    options = dict(options)
    options["smolvla"] = {"scale": int(getattr(owner.config, "scale_factor", 1) or 1),
                          "special": bool(getattr(config, "add_image_special_tokens", False)),
                          "prefix_length": int(getattr(config, "prefix_length", -1)),
                          "text": int(getattr(config, "tokenizer_max_length", 0))
                          if getattr(config, "pad_language_to", "") == "max_length" else None}
    keys = list(getattr(config, "image_features", None) or {})
    if options.get("cameras") is None and keys and _cameras_seen(entries) == len(keys):
        options["cameras"] = keys
    return options


def _cameras_seen(entries: List[Entry]) -> int:
    """The vision passes before the first language call: one per camera."""
    count = 0
    for e in entries:
        if e.tower != "vision":
            break
        count += e.layer == 0
    return count


def _prompt_layout(length, vision, batch, options) -> TokenLayout:
    # LeRobot's embed_prefix: per camera [special?, image, special?], language, state, padding to prefix_length.
    facts = options.get("smolvla")
    images, per_image = image_count(vision, batch)
    if facts is None or not images:
        return TokenLayout([Segment("context", 0, length)])
    scale = facts["scale"]
    per = per_image // (scale * scale)
    grid = vision[0].layout.find("image")[0].grid
    grid = (grid[0] // scale, grid[1] // scale) if grid and grid[0] * grid[1] // (scale * scale) == per else square(per)
    segments, at = [], 0
    for name in camera_names(images, options):
        for kind, size in (("context", 2 * facts["special"]), ("image", per), ("context", facts["special"])):
            if size:
                segments.append(Segment(kind, at, at + size, camera=name, grid=grid if kind == "image" else None))
                at += size
    text = length - at - 1
    padded = facts["prefix_length"] > 0 and length == facts["prefix_length"]
    if padded:  # padded to prefix_length: the language length is known only when padded to tokenizer_max_length
        text = facts["text"]
        if text is None:
            return TokenLayout(segments + [Segment("context", at, length)])
    if text < 0 or at + text + 1 > length:
        return TokenLayout([Segment("context", 0, length)])
    segments += [Segment("text", at, at + text), Segment("state", at + text, at + text + 1)]
    if at + text + 1 < length:
        segments.append(Segment("padding", at + text + 1, length))
    return TokenLayout(segments)


def _refuses(owned) -> Optional[str]:
    if any(_LEROBOT.owns(m) for m in owned.values()):
        return None
    return ("it holds SmolVLM vision attention but no LeRobot SmolVLMWithExpertModel, so it is not a SmolVLA "
            "policy; give the SmolVLAPolicy (or its model)")


_ADAPTER = register(Spec(
    "smolvla",
    vision_towers=("vision",),
    language_towers=("language",),
    expert_towers=("expert",),
    kinds=("image", "text", "state"),
    sources=[_VISION, _LEROBOT],
    tower=_tower,
    prompt_layout=_prompt_layout,
    options=("cameras",),
    refuses=_refuses,
    calls=_calls,
))
activate, capture, collect = _ADAPTER.activate, _ADAPTER.capture, _ADAPTER.collect
deactivate, is_active = _ADAPTER.deactivate, _ADAPTER.is_active
