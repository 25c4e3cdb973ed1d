"""Headless Chromium for the viewer's browser tests and benchmark (selenium; Debian's chromium and
chromium-driver). A fresh profile, no background networking: the machine may have no network."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from circuits.errors import CircuitsError

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = ("/usr/bin/chromedriver",)
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-default-apps",
         "--metrics-recording-only", "--window-size=1400,900")


def chromium_paths() -> tuple[str, str]:
    browser = next((p for p in CHROMIUM if Path(p).exists()), shutil.which("chromium"))
    driver = next((p for p in CHROMEDRIVER if Path(p).exists()), shutil.which("chromedriver"))
    if not browser or not driver:
        raise CircuitsError("the browser tests need Debian's chromium and chromium-driver "
                            "(apt-get install -y chromium chromium-driver; the README's test command does it)")
    return browser, driver


def headless_chromium(profile_dir: str | None = None):
    """(selenium driver, profile folder); console and network logs enabled. Quit the driver and
    remove the folder when done."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium_paths()
    profile = profile_dir or tempfile.mkdtemp(prefix="circuits-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    return driver, profile
