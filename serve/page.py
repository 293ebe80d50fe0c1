"""The browser page of the service: one self-contained HTML file (inline CSS and JS, no external asset),
served by the ingress as ``GET /``. It talks to ``POST predict?faces=1`` relative to its own URL, so it
works under any Serve route prefix."""

import functools
import os

PAGE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "index.html")


@functools.cache
def page_html() -> str:
    """The page's HTML, read once per process."""
    with open(PAGE_PATH, encoding="utf-8") as f:
        return f.read()
