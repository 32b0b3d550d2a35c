"""A headless Chromium driven by Selenium: the browser tests and benchmarks of the car's
web controller and of the fleet dashboard.

Debian's ``chromium`` and ``chromium-driver`` (launch/apt-packages.txt), pip's ``selenium``
(the dev extra). Every browser gets a fresh profile directory, removed on ``quit``, and
flags that keep it from talking to anything but the page under test.
"""

from __future__ import annotations

import shutil
import tempfile
import time
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
    # the page must keep drawing and keep its timers when nobody looks at it (a test measures
    # what it shows; the web controller's deadman tests freeze it on purpose)
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
)


def find_chromium() -> tuple[str, str]:
    """(browser, driver) paths, or an error that says what to install."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        raise EdgepilotError(
            "the browser tests need Chromium and its driver: "
            "apt-get install chromium chromium-driver (./launch/setup installs them)"
        )
    return browser, driver


def chromium(width: int = 1400, height: int = 1000) -> Any:
    """A new headless Chromium (``selenium.webdriver.Chrome``); ``quit()`` removes its profile."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise EdgepilotError("the browser tests need selenium: pip install -e '.[dev]'") from None
    browser, driver = find_chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in FLAGS:
        opts.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="edgepilot-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    opts.add_argument(f"--window-size={width},{height}")
    drv = webdriver.Chrome(options=opts, service=Service(driver))
    close = drv.quit

    def quit_and_clean() -> None:
        try:
            close()
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    drv.quit = quit_and_clean
    return drv


def until(drv: Any, script: str, timeout: float = 10.0, *args: Any) -> Any:
    """Run ``script`` (a JavaScript function body that returns) until it returns something
    truthy; that value. A timeout is an error naming the script."""
    deadline = time.monotonic() + timeout
    while True:
        got = drv.execute_script(script, *args)
        if got:
            return got
        if time.monotonic() > deadline:
            raise EdgepilotError(f"the page did not show it within {timeout:.0f} s: {script}")
        time.sleep(0.05)
