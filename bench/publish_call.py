"""What one publish call costs the process that makes it, for ``bench.run``.

``python -m bench.publish_call ours REDIS_URL COUNT CHANNELS``: ``sse.publish``
in an app context of ``bench.app``, as a view or a task publishes.
``python -m bench.publish_call nchan PORT COUNT CHANNELS``: a ``POST`` over
one keep-alive ``http.client`` connection, as a Flask app publishes to nchan.

Event ``i`` goes to channel ``c<i % CHANNELS>``. Prints the caller's CPU per
call in microseconds after a warm-up: in all, then its user and system parts
(``getrusage``; the system part, the kernel's work for the round trip, varies
the most from run to run on a virtual machine); the servers' and Redis's CPU
are read around it by ``bench.run``.
"""

from __future__ import annotations

import http.client
import os
import resource
import sys
import time
from collections.abc import Callable

WARM_UP = 200


def sse_publish(redis_url: str) -> Callable[[str, str], None]:
    os.environ["BENCH_REDIS_URL"] = redis_url
    from bench.app import app
    from flask_sse import sse

    app.app_context().push()

    def publish(data: str, channel: str) -> None:
        sse.publish(data, channel=channel)

    return publish


def http_publish(port: int) -> Callable[[str, str], None]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def publish(data: str, channel: str) -> None:
        connection.request(
            "POST", f"/publish?channel={channel}", body=data,
            headers={"Content-Type": "text/plain"},
        )
        response = connection.getresponse()
        response.read()
        if response.status >= 300:
            raise SystemExit(f"publish answered {response.status}")

    return publish


def main() -> None:
    kind, target, count, channels = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    publish = sse_publish(target) if kind == "ours" else http_publish(int(target))
    for seq in range(WARM_UP):
        publish(f"{seq} {time.time():.6f}", f"w{seq % channels}")
    started, started_user = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_utime
    for seq in range(count):
        publish(f"{seq} {time.time():.6f}", f"c{seq % channels}")
    cpu = time.process_time() - started
    user = resource.getrusage(resource.RUSAGE_SELF).ru_utime - started_user
    print(*(f"{1e6 * seconds / count:.2f}" for seconds in (cpu, user, cpu - user)))


if __name__ == "__main__":
    main()
