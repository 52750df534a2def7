"""A headless Chromium driven over WebDriver (selenium), for the tests that look at a page as a user does.

The tests skip where Chromium, ChromeDriver or selenium is missing, unless
GETLOCAL_REQUIRE_BROWSER=1 (as CI sets it): then they fail, so a green CI run
proves they ran.
"""
import io
import json
import os
import shutil
import tempfile
import time

import numpy as np
import pytest

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         "--window-size=1400,1000", "--force-device-scale-factor=1")


def _missing():
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (python -m pip install selenium)"
    if not _binary():
        return "no Chromium (apt-get install chromium)"
    if not shutil.which("chromedriver"):
        return "no ChromeDriver (apt-get install chromium-driver)"
    return None


def _binary():
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def start():
    """A fresh headless Chromium; skips (or fails under GETLOCAL_REQUIRE_BROWSER=1) without one."""
    why = _missing()
    if why:
        if os.environ.get("GETLOCAL_REQUIRE_BROWSER") == "1":
            pytest.fail(f"GETLOCAL_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="getlocal-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.binary_location = _binary()
    # the DevTools network log: every request the page makes, whatever its scheme
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.profile_dir = profile
    return driver


def stop(driver):
    driver.quit()
    shutil.rmtree(driver.profile_dir, ignore_errors=True)


def open_page(driver, path, timeout=10.0):
    """Load ``path`` from disk and wait until its pictures are drawn; returns the seconds it took."""
    driver.get_log("performance")  # forget what earlier pages did
    t0 = time.perf_counter()
    driver.get(f"file://{os.path.abspath(path)}")
    while not driver.execute_script("return document.body && document.body.dataset.ready === '1'"):
        if time.perf_counter() - t0 > timeout:
            raise AssertionError(f"{path} did not get ready in {timeout} s; console: {driver.get_log('browser')}")
        time.sleep(0.02)
    return time.perf_counter() - t0


def errors(driver):
    """The console's errors (an exception in the page's script shows here)."""
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def requested_urls(driver):
    """Every URL the page asked for since it was opened, from the DevTools network log."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"))


def assert_not_blank(png: bytes, what: str):
    """A screenshot shows something: many distinct colours and no single colour covering nearly all of it."""
    arr = pixels(png)
    flat = arr.reshape(-1, 3)
    colours, counts = np.unique(flat, axis=0, return_counts=True)
    assert len(colours) > 20, f"{what}: only {len(colours)} colours"
    assert counts.max() < 0.95 * len(flat), f"{what}: one colour covers {counts.max() / len(flat):.0%}"
    assert flat.std() > 10, f"{what}: pixel std {flat.std():.1f}"
