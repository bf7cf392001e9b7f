"""The page in a real Chromium, driven by Playwright, against a real gateway and worker."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.mark.browser
def test_upload_classify_and_report_in_the_browser(gateway, workers, photos, tmp_path: Path) -> None:
    workers()
    process = gateway()
    shot = tmp_path / "result.png"
    console_errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.goto(f"{process.base_url}/")
            expect(page.get_by_role("heading", name="Classify an image")).to_be_visible()

            page.set_input_files("input[name=file]", str(photos["coffee"]))
            page.get_by_role("button", name="Classify").click()
            prediction = page.locator(".prediction")
            expect(prediction).to_have_text("espresso", timeout=30_000)
            expect(page.locator(".scores li")).to_have_count(5)
            image = page.locator(".result-image img")
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
            assert image.evaluate("img => img.naturalWidth") > 0
            assert "efficientnet" in page.locator(".facts").inner_text().lower()
            page.screenshot(path=str(shot), full_page=True)

            page.get_by_text("Report an incorrect answer").click()
            page.fill("input[name=correct_label]", "cappuccino")
            page.get_by_role("button", name="Send report").click()
            expect(page.get_by_role("status")).to_contain_text("Thank you")
        finally:
            browser.close()

    assert console_errors == []  # e.g. a CSP violation would show up here
    assert shot.exists() and shot.stat().st_size > 20_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    feedback = tmp_path / "feedback" / "feedback.csv"
    rows = list(csv.reader(feedback.open(newline="")))
    assert len(rows) == 2 and rows[1][2] == "espresso" and rows[1][4] == "cappuccino"
