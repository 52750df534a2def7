"""The demo's models: built (timm ViT, tiny OpenVLA, tiny Pi0, tiny SmolVLA), given weights, run with maps captured.

>>> maps, images, info = capture("vit_small_patch16_224", False, picture)   # doctest: +SKIP
>>> info["weights"]                                                         # doctest: +SKIP
'random init: no trained weights for ... in the local Hugging Face cache; ...'

torch, timm and the adapters are imported when a model is built, never when
this module is: ``plot`` and ``view`` import it through the command line and
must run where torch is not installed.
"""
import os
from typing import Any, Callable, Dict, NamedTuple, Optional

from getlocal import get_local

from .inputs import CommandError

DEMO_MODEL = "vit_small_patch16_224"
TINY_MODELS = ("openvla-tiny", "paligemma-tiny", "smolvla-tiny")
TINY_IMAGE = 112  # the tiny models see 8 x 8 patches of 14 px
_GENERATED = 7  # openvla-tiny's action tokens, as OpenVLA predicts 7 (one per degree of freedom)
HUB_TIMEOUT = 3.0  # seconds to reach the hub before --pretrained gives up


def check_model(name: str) -> None:
    """``--model``: a tiny model (transformers importable) or a timm model name.

    This needs transformers or timm (and so torch) imported: the command line checks
    every other argument and path first, so that their errors come at once.
    """
    if name in TINY_MODELS:
        try:
            import transformers  # noqa: F401  (a broken install too: find_spec would not see it)
        except ImportError:
            raise CommandError(f"--model {name} needs transformers: python -m pip install -e \".[adapters]\"") from None
        if name == "smolvla-tiny":
            try:
                import lerobot.policies.smolvla.modeling_smolvla  # noqa: F401
            except ImportError as exc:
                raise CommandError(f"--model smolvla-tiny runs LeRobot's own SmolVLA code, which does not import "
                                   f"here ({exc}); pip install lerobot (0.4.x on Python 3.10/3.11, 0.5 and later "
                                   "on Python 3.12)") from None
        return
    import timm

    if not timm.is_model(name):
        raise CommandError(
            f"unknown model {name!r}; use {DEMO_MODEL} (the default), openvla-tiny, paligemma-tiny, or another "
            "smolvla-tiny (needs lerobot), or another timm ViT name "
            "(python -c \"import timm; print(timm.list_models('vit_*'))\")")


def square(picture, size: int):
    """The centre square of ``picture`` resized to ``size`` x ``size``, as uint8 ``[H, W, 3]``."""
    import numpy as np
    from PIL import Image

    w, h = picture.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    return np.asarray(picture.crop(box).resize((size, size), Image.BICUBIC))


def load_weights(model, path: str, what: str) -> None:
    """Load the state dict in ``path`` into ``model``, every key and shape exactly; else one line."""
    import torch

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same mistake for the user
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CommandError(f"--weights {path}: not a readable state dict ({first[:160]}); give a .safetensors "
                           "or .pth file saved from the model's state_dict()") from None
    for wrapper in ("state_dict", "model"):  # training checkpoints often nest the weights one level down
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CommandError(f"--weights {path}: not a state dict (a mapping of names to tensors)")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{len(v)} {word} (e.g. {v[0]})" for v, word in ((missing, "missing"), (unexpected, "unexpected"),
                                                                    (wrong, "of another shape")) if v]
        raise CommandError(f"--weights {path} does not fit {what}: keys {', '.join(parts)}; give a checkpoint "
                           "of this very model")
    model.load_state_dict(state, strict=True)


def _check_hub(repo: str) -> None:
    """Fail within seconds, in one line, where the hub cannot be reached (instead of the client's minute of retries)."""
    import socket
    from urllib.parse import urlsplit
    from urllib.request import getproxies

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise CommandError(f"--pretrained needs the network to download {repo}, but HF_HUB_OFFLINE is set; "
                           "unset it, or pass --weights PATH to a checkpoint on disk")
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    url = urlsplit(endpoint)
    proxy = getproxies().get(url.scheme)
    target = urlsplit(proxy) if proxy else url
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((target.hostname or "", port), timeout=HUB_TIMEOUT).close()
    except OSError as exc:
        why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        via = f" through the proxy {proxy}" if proxy else ""
        raise CommandError(f"--pretrained: cannot reach {endpoint}{via} ({why}); check the network (and "
                           "HF_ENDPOINT), pass --weights PATH to a checkpoint on disk, or leave --pretrained out "
                           "for random weights") from None


def _vit_model(name: str, pretrained: bool, weights: Optional[str] = None):
    """The timm model and a sentence saying which weights it has. Never touches the network unless asked."""
    import timm

    if weights:
        model = timm.create_model(name, pretrained=False)
        load_weights(model, weights, f"{name}")
        return model, f"weights from {weights}"

    repo = getattr(timm.models.get_pretrained_cfg(name) or object(), "hf_hub_id", None)
    cached = None
    if repo:
        try:
            from huggingface_hub import try_to_load_from_cache

            for filename in ("model.safetensors", "pytorch_model.bin"):
                found = try_to_load_from_cache(repo, filename)
                if isinstance(found, str):
                    cached = found
                    break
        except ImportError:  # pragma: no cover - timm depends on huggingface_hub
            pass
    if cached:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": cached})
        return model, f"trained weights from the local Hugging Face cache ({repo})"
    if pretrained:
        _check_hub(repo or name)
        try:
            model = timm.create_model(name, pretrained=True)
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise CommandError(f"could not download the weights of {repo or name} ({type(exc).__name__}: {first}); "
                               "check the network, or run without --pretrained for random init") from None
        return model, f"trained weights downloaded from the Hugging Face hub ({repo})"
    import torch

    torch.manual_seed(0)  # the same random weights on every run, so runs can be compared
    model = timm.create_model(name, pretrained=False)
    flag = "" if name == DEMO_MODEL else f" --model {name}"
    how = f"run `python -m getlocal demo{flag} --pretrained` to download them" if repo else \
        "timm has no trained weights for it on the Hugging Face hub"
    return model, (f"random init: no trained weights for {repo or name} in the local Hugging Face cache; {how}. "
                   "Random weights show the machinery; trained ones show the patterns")


class _Demo(NamedTuple):
    """A demo model ready to run: the adapter that captures it, and what the capture is saved with."""

    model: Any
    run: Callable[[], Any]  # one run on the picture
    adapter: Any  # getlocal.adapters.vit, openvla or paligemma
    images: Dict[str, Any]
    info: Dict[str, Any]
    options: Dict[str, Any] = {}  # for the adapter's capture(): cameras, state_tokens
    # A second pass with gradients: (explain.relevance of a chosen output, what that output is); None: no backward
    relevance: Optional[Callable[[], Any]] = None


def capture(name: str, pretrained: bool, picture, weights: Optional[str] = None, mode: str = "eager"):
    """``(maps, images, info, relevance)``: the demo model ``name`` run once on ``picture``, every map captured.

    ``relevance``: ``(Explanation, what its target is)`` from a second pass with
    gradients (``explain.relevance``) where the model's output has one to
    explain (the ViT's top class), else None.
    """
    build = {"openvla-tiny": _openvla_demo, "paligemma-tiny": _pi0_demo,
             "smolvla-tiny": _smolvla_demo}.get(name, _vit_demo)
    demo = build(name, pretrained, picture, weights, mode)
    demo.info["mode"] = mode
    get_local.clear()
    try:
        with demo.adapter.capture(demo.model, mode=mode, **demo.options) as maps:
            demo.run()
    finally:
        get_local.clear()
    if not len(maps):
        raise CommandError(f"--model {name}: no attention map was captured; its blocks are not timm Attention "
                           f"modules; give a ViT such as {DEMO_MODEL}")
    return maps, demo.images, demo.info, demo.relevance() if demo.relevance else None


def _vit_demo(name: str, pretrained: bool, picture, weights: Optional[str], mode: str = "eager") -> _Demo:
    import numpy as np
    import torch

    from getlocal.adapters import vit

    model, described = _vit_model(name, pretrained, weights)
    model.eval()
    if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
        raise CommandError(f"--model {name} is not a vision transformer (no blocks/patch_embed); "
                           f"give a ViT such as {DEMO_MODEL}, or openvla-tiny / paligemma-tiny")
    size = int(model.patch_embed.img_size[0])
    shown = square(picture, size)
    mean = np.asarray(model.pretrained_cfg.get("mean", (0.5, 0.5, 0.5)), dtype=np.float32)
    std = np.asarray(model.pretrained_cfg.get("std", (0.5, 0.5, 0.5)), dtype=np.float32)
    pixels = torch.from_numpy(((shown / 255.0 - mean) / std).astype(np.float32)).permute(2, 0, 1)[None]
    info = {"weights": described, "random_weights": described.startswith("random init"),
            "patch_size": {"vit": vit.patch_size(model)},
            "preprocessing": f"centre square resized to {size}x{size}, normalised with mean {mean.tolist()} "
                             f"std {std.tolist()}"}

    def relevance():
        from getlocal import explain

        with vit.capture(model, convert="raw") as raw:  # eager maps inside the graph, whatever --mode
            logits = model(pixels)
        top = int(logits[0].argmax())
        # the [CLS] key left out: its own relevance (the identity Chefer starts from) is not a place in the image
        return (explain.relevance(logits[0, top], raw, rows="cls", exclude="cls"),
                f"the top class's logit (class {top})")

    return _Demo(model, torch.no_grad()(lambda: model(pixels)), vit, {"image": shown}, info, relevance=relevance)


def _tiny_pixels(shown):
    import torch

    return torch.from_numpy(shown / 127.5 - 1.0).float().permute(2, 0, 1)[None]  # [-1, 1], as SigLIP


def _openvla_demo(name: str, pretrained: bool, picture, weights: Optional[str], mode: str = "eager") -> _Demo:
    from getlocal.adapters import openvla, tiny

    model = tiny.openvla(image_size=TINY_IMAGE, attn_implementation="eager" if mode == "eager" else None)
    if weights:
        load_weights(model, weights, name)
    shown = square(picture, TINY_IMAGE)
    _, ids = tiny.openvla_inputs(model)
    info = {"weights": f"weights from {weights}" if weights else
                       "random init (a small OpenVLA-shaped model: timm DINOv2 with registers + SigLIP, an MLP "
                       "projector and a 2-layer Llama; no trained weights exist for it)",
            "random_weights": not weights,
            "patch_size": {"dinov2": 14, "siglip": 14},
            "preprocessing": f"centre square resized to {TINY_IMAGE}x{TINY_IMAGE}; {_GENERATED} generated (action) "
                             f"tokens: the prefill gives the first, each of {_GENERATED - 1} decode steps feeds the "
                             f"one before back and gives the next, so the llm's layout holds {_GENERATED - 1} "
                             "generated positions (the last token is never fed back)",
            "generated": "action"}
    return _Demo(model, lambda: tiny.generate(model, _tiny_pixels(shown), ids, max_new_tokens=_GENERATED), openvla,
                 {"image": shown}, info)


def _pi0_demo(name: str, pretrained: bool, picture, weights: Optional[str], mode: str = "eager") -> _Demo:
    import numpy as np
    from PIL import Image

    from getlocal.adapters import paligemma, tiny

    model = tiny.pi0(image_size=TINY_IMAGE, attn_implementation="eager" if mode == "eager" else None)
    if weights:
        load_weights(model, weights, name)
    exterior = square(picture, TINY_IMAGE)
    w, h = picture.size
    wrist = picture.crop((w // 4, h // 2, 3 * w // 4, h)).resize((TINY_IMAGE, TINY_IMAGE), Image.BICUBIC)
    wrist = np.asarray(wrist)
    _, ids, state = tiny.pi0_inputs(model, cameras=2)
    info = {"weights": f"weights from {weights}" if weights else
                       "random init (a small Pi0-shaped model: PaliGemma = SigLIP + 2-layer Gemma, beside a Gemma "
                       "action expert; no trained weights exist for it)",
            "random_weights": not weights,
            "patch_size": {"vision": 14},
            "preprocessing": (f"two cameras: exterior = centre square, wrist = a crop of the lower half, both "
                              f"resized to {TINY_IMAGE}x{TINY_IMAGE}; 1 state + 4 action tokens, 3 denoising steps")}
    return _Demo(model, lambda: model.sample_actions([_tiny_pixels(exterior), _tiny_pixels(wrist)], ids, state,
                                                     horizon=4, steps=3),
                 paligemma, {"exterior": exterior, "wrist": wrist}, info,
                 {"cameras": ["exterior", "wrist"], "state_tokens": 1})


#: The cameras of the SmolVLA demo: LeRobot's image keys, as a LeRobot dataset names them.
_SMOLVLA_CAMERAS = ("observation.images.top", "observation.images.wrist")


def _smolvla_demo(name: str, pretrained: bool, picture, weights: Optional[str], mode: str = "eager") -> _Demo:
    import tempfile

    import numpy as np
    import torch
    from PIL import Image

    from getlocal.adapters import smolvla, tiny

    with tempfile.TemporaryDirectory() as config_dir:  # read while the policy is built, not after
        policy = tiny.smolvla(config_dir, _SMOLVLA_CAMERAS, layers=4, every=2, steps=3, chunk=5, text=8,
                              image=TINY_IMAGE, patch=14)
    if weights:
        load_weights(policy, weights, name)
    top = square(picture, TINY_IMAGE)
    w, h = picture.size
    wrist = np.asarray(picture.crop((w // 4, h // 2, 3 * w // 4, h)).resize((TINY_IMAGE, TINY_IMAGE), Image.BICUBIC))
    frames = {key: torch.from_numpy(frame / 255.0).float().permute(2, 0, 1)[None]  # LeRobot's [0, 1] frames
              for key, frame in zip(_SMOLVLA_CAMERAS, (top, wrist))}
    words = 5
    batch = tiny.smolvla_inputs(policy, frames=frames, words=words)
    batch["observation.state"] = torch.zeros(1, 4)
    noise = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(0))
    info = {"weights": f"weights from {weights}" if weights else
                       "random init (LeRobot's own SmolVLAPolicy at a tiny size: a SmolVLM with a 1-layer vision "
                       "encoder and 4 text layers beside a 4-layer action expert, cross-attention with a "
                       "self-attention layer every 2nd; no trained weights exist for it)",
            "random_weights": not weights,
            "patch_size": {"vision": 14},
            "preprocessing": (f"two cameras ({', '.join(_SMOLVLA_CAMERAS)}): top = centre square, wrist = a crop "
                              f"of the lower half, both resized to {TINY_IMAGE}x{TINY_IMAGE}; {words} language "
                              "tokens padded to 8, 1 state token, 5 action tokens, 3 denoising steps")}
    return _Demo(policy, lambda: policy.predict_action_chunk(batch, noise=noise), smolvla,
                 dict(zip(_SMOLVLA_CAMERAS, (top, wrist))), info)
