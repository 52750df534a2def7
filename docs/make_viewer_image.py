"""Regenerate docs/images/viewer.png: the viewer on the demo's tiny Pi0 capture, in headless Chromium.

    python docs/make_viewer_image.py

Needs what the browser tests need (Chromium, ChromeDriver, selenium) and
transformers for the tiny model. The model is random init, as the page itself
says in its note: the picture shows the page, not a trained policy. The colours are the
default, the figures' x-uniform scale: random weights stay pale, as on the PNGs.
"""
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the tests' Chromium helper: one place that knows the flags

import browser  # noqa: E402
from matplotlib.cbook import get_sample_data  # noqa: E402
from PIL import Image  # noqa: E402

from getlocal import view  # noqa: E402
from getlocal.cli import models  # noqa: E402

OUT = ROOT / "docs" / "images" / "viewer.png"


def main():
    with Image.open(get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        picture = im.convert("RGB")
    maps, images, info, _ = models.capture("paligemma-tiny", False, picture)
    info["model"] = "paligemma-tiny (Pi0 shape)"
    page = view(maps, images=images, info=info, out=Path(tempfile.mkdtemp()) / "pi0.html")
    driver = browser.start()
    try:
        browser.open_page(driver, page.path)
        driver.execute_script("""
            const pick = (id, v) => { const s = document.getElementById(id); s.value = v; s.dispatchEvent(new Event('change')); };
            pick('step', '3'); pick('layer', '1');""")
        driver.find_element("css selector", '#strip .tok[data-pos="136"]').click()   # the last action token
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, height + 20)
        OUT.write_bytes(driver.get_screenshot_as_png())
    finally:
        browser.stop(driver)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
