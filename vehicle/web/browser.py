"""Headless Chromium driven by Selenium: the web controller's tests and benchmark.

Debian's ``chromium`` and ``chromium-driver`` (launch/apt-packages.txt) and pip's
``selenium`` (the dev extra). Each browser gets a fresh profile directory, and the
flags keep it from talking to anything but the page under test.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from edgepilot import EdgepilotError

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    # a backgrounded page must keep its timers: the deadman tests freeze it on purpose
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
)


def find_chromium() -> tuple[str, str]:
    """(browser, driver) paths, or an error that says what to install."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        raise EdgepilotError(
            "the browser tests need Chromium and its driver: apt-get install chromium chromium-driver "
            "(./launch/setup installs them)"
        )
    return browser, driver


def chromium(width: int = 1100, height: int = 760) -> Any:
    """A new headless Chromium (``selenium.webdriver.Chrome``); ``quit()`` it when done."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise EdgepilotError("the browser tests need selenium: pip install -e '.[dev]'") from None
    browser, driver = find_chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for f in FLAGS:
        opts.add_argument(f)
    profile_dir = tempfile.mkdtemp(prefix="edgepilot-chromium-")
    opts.add_argument(f"--user-data-dir={profile_dir}")
    opts.add_argument(f"--window-size={width},{height}")
    drv = webdriver.Chrome(options=opts, service=Service(driver))
    quit_ = drv.quit

    def quit_and_clean() -> None:
        try:
            quit_()
        finally:
            shutil.rmtree(profile_dir, ignore_errors=True)

    drv.quit = quit_and_clean
    return drv
