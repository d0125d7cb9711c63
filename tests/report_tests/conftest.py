from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"


class DomSummary(HTMLParser):
    """Tags (with attributes) and the text of an HTML document, as a browser-free parser sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    @classmethod
    def of(cls, html: str) -> "DomSummary":
        parser = cls()
        parser.feed(html)
        parser.close()
        return parser

    def elements(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for t, attrs in self.tags if t == tag]

    @property
    def all_text(self) -> str:
        return "".join(self.text)


@pytest.fixture
def dump_dom():
    """``dump_dom(path) -> str``: the DOM that headless Chromium builds from a local file."""
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        pytest.skip(f"headless Chromium is not installed at {CHROMIUM}; the browser check needs it")
    binary = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")

    def run(path: Path) -> str:
        with tempfile.TemporaryDirectory() as profile:
            cmd = [
                binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--dump-dom", path.resolve().as_uri(),
            ]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)
            except subprocess.TimeoutExpired:
                # A script that runs alert() blocks headless Chromium, so a hang is itself a finding.
                pytest.fail("headless Chromium did not finish in 90 s; did a script from the page open a dialog?")
        assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
        assert "<html" in done.stdout, f"chromium printed no DOM: {done.stderr[-2000:]}"
        return done.stdout

    return run
