"""What the package can tell about the server that runs it.

Whether it can hold many open streams at all (gunicorn's sync and threaded
workers, waitress: the view warns or refuses, once, saying what to serve
with instead), and how many sibling workers its gunicorn runs (for the
Redis connection budget the registry logs). Read from the WSGI environ and
``/proc``; nothing here touches a stream.
"""

from __future__ import annotations

import os
from typing import Any


def server_problem(environ: dict[str, Any]) -> tuple[bool, str] | None:
    """What keeps this server from holding many open streams, if we can tell.

    Returns ``(refuse, message)``: ``refuse`` when one stream would block the
    whole worker (gunicorn's sync worker), else the message is a warning.
    """
    software = str(environ.get("SERVER_SOFTWARE", ""))
    if "gunicorn.socket" in environ and not _gevent_patched():
        if not environ.get("wsgi.multithread"):
            return True, (
                "This gunicorn worker is a sync worker: one stream would hold it until its "
                "timeout kills it. Serve streams with gunicorn -k gevent "
                "(--worker-connections sets how many streams a worker holds)."
            )
        return False, (
            "This gunicorn worker is a threaded (gthread) worker: each open stream holds one "
            "of its --threads, and once they are all taken every other request waits too. "
            "Serve streams with gunicorn -k gevent (--worker-connections sets how many)."
        )
    if software.startswith("waitress"):
        return False, (
            "waitress serves only as many requests at once as its threads (4 by default), "
            "and each open stream holds one: raise --threads well above the streams you "
            "expect (and add --channel-request-lookahead=1, or a stream whose client left "
            "holds its thread until a write fails), or serve streams with gunicorn -k gevent."
        )
    return None


def _gevent_patched() -> bool:
    try:
        from gevent import monkey  # type: ignore[import-untyped]
    except ImportError:
        return False
    return bool(monkey.is_module_patched("socket"))


def sibling_workers() -> int:
    """How many other worker processes the gunicorn that started this one runs (0 if unknown).

    Read from ``/proc`` (Linux): the parent's command line and its children.
    """
    parent = os.getppid()
    try:
        with open(f"/proc/{parent}/cmdline", "rb") as cmdline:
            if b"gunicorn" not in cmdline.read():
                return 0
        with open(f"/proc/{parent}/task/{parent}/children") as children:
            return max(0, len(children.read().split()) - 1)
    except OSError:
        return 0
