"""The publisher: ``POST /publish`` COUNT events at RATE per second (0: flat out).

Each event's data is ``"<seq> <time.time()>"``, so receivers can count loss,
duplicates and publish-to-receive latency. A process of its own, so that
publishing is not slowed by the receivers.
``python -m bench.publish PORT COUNT RATE [FIRST]``
"""

from __future__ import annotations

import http.client
import sys
import time


def main() -> None:
    port, count, rate = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    first = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    start = time.perf_counter()
    for seq in range(first, first + count):
        if rate:
            delay = start + (seq - first) / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        body = f"{seq} {time.time():.6f}"
        connection.request("POST", "/publish", body=body, headers={"Content-Type": "text/plain"})
        response = connection.getresponse()
        response.read()
        if response.status >= 300:
            raise SystemExit(f"publish {seq} answered {response.status}")


if __name__ == "__main__":
    main()
