"""A real uvicorn server in a thread, Debian's Chromium via Playwright's sync API, and
axe-core (from tests/js/node_modules) run in the page.

With ``CI=true`` a missing Chromium, Playwright or axe-core fails the test (``need``)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from calsync.config import Settings
from calsync.db.session import Database
from tests.caldav_servers import free_port
from tests.conftest import need

CHROMIUM = os.environ.get("CALSYNC_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
AXE = Path(__file__).resolve().parents[1] / "js" / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = Path(os.environ.get("CALSYNC_TEST_ARTIFACTS",
                                Path(__file__).resolve().parents[1] / "artifacts"))


@contextmanager
def live_server(settings: Settings, db: Database) -> Iterator[tuple[str, Settings, Any]]:
    """``calsync serve``'s app on a free loopback port; yields (base URL, the settings it
    runs with, the app)."""
    import uvicorn

    from calsync.api.app import create_app

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = replace(settings, server=replace(settings.server, base_url=base, port=port))
    app = create_app(settings, db)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield base, settings, app
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Debian Chromium browser (Playwright ``Browser``)."""
    need(Path(CHROMIUM).exists() or shutil.which("chromium") is not None,
         f"Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - declared in the test extra
        need(False, "the playwright package (pip install -e '.[test]')")
        raise
    path = CHROMIUM if Path(CHROMIUM).exists() else str(shutil.which("chromium"))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Any) -> Any:
    """A page in its own context (own cookies). CSP is bypassed only so that the test can
    inject axe-core; the pages' own scripts are calsync's files either way."""
    context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900},
                                  locale="en-US")
    context.set_default_timeout(15_000)
    return context.new_page()


def serious_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's violations of impact serious or critical on the current page."""
    need(AXE.exists(), f"axe-core at {AXE} (cd tests/js && npm install)")
    page.add_script_tag(path=str(AXE))
    violations: list[dict[str, Any]] = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations")
    return [{"id": v["id"], "impact": v["impact"], "help": v["help"],
             "nodes": [n["html"][:160] for n in v["nodes"]][:5]}
            for v in violations if v["impact"] in ("serious", "critical")]


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path
