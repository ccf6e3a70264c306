"""The JavaScript client (``static/client.js``), served by every SSE blueprint.

At ``<prefix>/client.js``, so a page imports it from the app itself: no
build step and no second origin. ``sse.client_url()`` adds the package's
version (``?v=2.0.0``), which may then be cached for a year, since an
upgrade changes the URL; without it the browser revalidates (ETag) each load.
"""

from __future__ import annotations

from pathlib import Path

from flask import Response, request, send_file

SCRIPT = Path(__file__).with_name("static") / "client.js"
#: Seconds a versioned URL may be cached: it names one release's file.
VERSIONED_MAX_AGE = 365 * 24 * 3600


def client_version() -> str:
    """The installed package's version, which names the client's file."""
    from . import __version__  # here: the package imports this module first

    return __version__


def client_script() -> Response:
    """The view of ``<prefix>/client.js``."""
    versioned = request.args.get("v") == client_version()
    response = send_file(
        SCRIPT,
        mimetype="text/javascript",
        max_age=VERSIONED_MAX_AGE if versioned else 0,
        conditional=True,
        etag=True,
    )
    if not versioned:
        response.cache_control.no_cache = True
    return response
