"""What the demo writes states its baselines and units, scores every camera, and measures its captions."""
import json

import pytest

pytest.importorskip("transformers")

from getlocal import cli  # noqa: E402


@pytest.fixture(scope="module")
def pi0(tmp_path_factory):
    out = tmp_path_factory.mktemp("pi0")
    assert cli.main(["demo", "--model", "paligemma-tiny", "--out", str(out), "--quiet"]) == 0
    return out


def test_summary_legend_uses_the_towers_real_grid_and_explains_every_column(pi0):
    text = (pi0 / "summary.md").read_text()
    assert "14 x 14" not in text and "7.3" not in text  # these towers have 8 x 8 grids
    assert "uniform attention gives 4.1 patches on the 8 x 8 grid of vision exterior" in text
    for column in ("nmi", "sinks", "self", "top2%"):
        assert f"- **{column}**: " in text
    assert "| nmi |" in text and "| sinks |" in text


def test_every_camera_of_the_vision_tower_is_scored_and_drawn(pi0):
    summary = json.loads((pi0 / "summary.json").read_text())
    assert {"vision exterior", "vision wrist"} <= set(summary["towers"])
    assert "vision/prefix_L1_attn_vis_heads-wrist.png" in summary["figures"]
    assert "vision/prefix_Lall_attn_vis_patterns-wrist.png" in summary["figures"]


def test_kind_share_tables_give_each_share_with_its_ratio_to_uniform(pi0):
    summary = json.loads((pi0 / "summary.json").read_text())
    row = summary["kind_shares"]["language"]["rows"][0]
    assert "image:exterior uniform" in row and row["image:exterior uniform"] > 0
    text = (pi0 / "summary.md").read_text()
    assert "1.00x is no preference" in text
    share, base = row["image:exterior"], row["image:exterior uniform"]
    assert f"{share:.3f} ({share / base:.2f}x)" in text


def test_random_weight_titles_state_what_the_figure_measures(pi0):
    text = (pi0 / "summary.md").read_text()
    assert "nearly uniform attention, no learned pattern" not in text
    assert "how far from uniform" in text
