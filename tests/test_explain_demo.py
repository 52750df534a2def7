"""`python -m getlocal demo` and `plot` write the rollout (and, for a ViT, its top class's relevance) beside the last layer."""
import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("transformers")
pytest.importorskip("timm")

from getlocal import cli, explain, plot, saved  # noqa: E402


def _pixels(source):
    with Image.open(source) as im:
        return np.asarray(im.convert("RGB"))


#: The line every demo figure of random weights carries under its title.
RANDOM = "\nRANDOM WEIGHTS: shares near the even share are noise, not a learned pattern"


def _drawn(result, picture, camera, title):
    import matplotlib.pyplot as plt

    fig = plot.relevance_figure(result, picture, camera=camera)
    fig.suptitle(title, fontsize=10, y=1.0, va="bottom")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    buffer.seek(0)
    return _pixels(buffer)


def test_the_pi0_demo_writes_each_cameras_rollout_of_the_action_queries_and_plot_redraws_it(tmp_path, capsys):
    assert cli.main(["demo", "--model", "paligemma-tiny", "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "explanation: rollout (mean) of language+expert from the 4 action queries of denoise step 3" in printed
    capture = saved.read(tmp_path / "demo" / "capture")
    maps = capture.data
    want = explain.rollout(maps.select(tower=["language", "expert"], step=[0, 3]), rows="action")
    for camera in ("exterior", "wrist"):
        written = _pixels(tmp_path / "demo" / "explain" / f"rollout_{camera}.png")
        title = f"language+expert {camera}: attention rollout from the 4 action queries of denoise step 3" + RANDOM
        assert np.array_equal(written, _drawn(want, capture.images[camera], camera, title))
    assert cli.main(["plot", str(tmp_path / "demo" / "capture"), "--out", str(tmp_path / "again")]) == 0
    for camera in ("exterior", "wrist"):
        name = f"explain/rollout_{camera}.png"
        assert np.array_equal(_pixels(tmp_path / "again" / name), _pixels(tmp_path / "demo" / name))


def test_the_openvla_demo_explains_its_generated_tokens_with_bos_left_out(tmp_path, capsys):
    assert cli.main(["demo", "--model", "openvla-tiny", "--out", str(tmp_path), "--quiet"]) == 0
    assert "rollout (mean) of llm from the 6 generated tokens' rows (BOS left out), through 2 layers" in \
        capsys.readouterr().out
    capture = saved.read(tmp_path / "capture")
    want = explain.rollout(capture.data.select(tower="llm"), rows="generated", exclude="bos")
    assert np.array_equal(_pixels(tmp_path / "explain" / "rollout.png"), _drawn(
        want, capture.images["image"], None, "llm: attention rollout from the 6 generated tokens' rows (BOS left out)" + RANDOM))


def test_the_vit_demo_draws_the_relevance_of_its_top_class_with_the_cls_key_left_out(tmp_path, capsys):
    import timm
    import torch

    from getlocal.adapters import vit

    assert cli.main(["demo", "--model", "vit_tiny_patch16_224", "--out", str(tmp_path), "--quiet"]) == 0
    printed = capsys.readouterr().out
    capture = saved.read(tmp_path / "capture")
    torch.manual_seed(0)  # the demo's random weights, built again here
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    pixels = torch.from_numpy(((capture.images["image"] / 255.0 - 0.5) / 0.5).astype(np.float32)).permute(2, 0, 1)
    with vit.capture(model, convert="raw") as raw:
        logits = model(pixels[None])
    top = int(logits[0].argmax())
    want = explain.relevance(logits[0, top], raw, rows="cls", exclude="cls")
    assert f"relevance of the top class's logit (class {top}) to vit's [CLS] row ([CLS] key left out)" in printed
    title = f"vit: relevance of the top class's logit (class {top}) (Chefer et al. 2021)" + RANDOM
    assert np.array_equal(_pixels(tmp_path / "explain" / "relevance.png"),
                          _drawn(want, capture.images["image"], None, title))
