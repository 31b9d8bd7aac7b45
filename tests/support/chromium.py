"""Headless Chromium's command line as the browser tests run it."""

from __future__ import annotations

from pathlib import Path


def headless(chromium: str, profile: Path) -> list[str]:
    """The start of a command line (a list of arguments) that runs the binary `chromium`
    headless, with no sandbox, GPU or QUIC, no first-run pages, and background networking,
    component updates, sync, extensions and default apps off; its user data in the folder
    `profile`. The caller adds its network flags and the URL."""
    return [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        f"--user-data-dir={profile}",
    ]
