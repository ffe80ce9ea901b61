"""Headless Chromium for page tests (Debian's chromium + chromedriver, driven by selenium)."""

from __future__ import annotations

import os
import shutil

import pytest


def chromium_paths() -> tuple[str | None, str | None]:
    return shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


def driver():
    """A headless Chromium WebDriver, or a skip (a failure under CI) when chromium is absent."""
    browser, drv = chromium_paths()
    if not browser or not drv:
        msg = "chromium/chromedriver not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(msg + " — CI must install them (.ci/run does)")
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(drv), options=opts)


def console_errors(d) -> list[str]:
    return [e["message"] for e in d.get_log("browser") if e.get("level") == "SEVERE"]


def screenshot(d, name: str) -> None:
    """Save the page as test-artifacts/NAME (kept by CI as an artifact of the run)."""
    from pathlib import Path

    shots = Path(__file__).parent.parent / "test-artifacts"
    shots.mkdir(exist_ok=True)
    d.save_screenshot(str(shots / name))
