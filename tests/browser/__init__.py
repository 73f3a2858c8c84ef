"""Browser-test helpers: a live calsync server on 127.0.0.1, Debian's Chromium through
Playwright (never a browser download), axe-core run inside the page."""
