"""Headless Debian Chromium through Playwright, for the dashboard tests."""

import shutil
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()


@contextmanager
def chromium_page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            yield browser.new_page()
        finally:
            browser.close()


def sign_in(page, url: str, key: str) -> None:
    page.goto(f"{url}/ui")
    assert page.url.endswith("/ui/login")
    page.fill("#key", key)
    page.click("#signin")
