"""The tiny app both Flask servers run: this project's and flask-sse 1.0.0's.

The same file serves both; which ``flask_sse`` it imports is decided by
``PYTHONPATH`` (flask-sse 1.0.0 is installed into a folder of its own).
``BENCH_METRICS`` turns this project's metrics on (``--metrics``);
``BENCH_HEAP`` traces the worker's Python allocations and serves them by
package at ``/heap`` (``bench.memory``).
"""

from __future__ import annotations

import os

from flask import Flask, request

from flask_sse import sse

app = Flask(__name__)
if os.environ.get("BENCH_METRICS"):  # python -m bench --metrics, this project's server only
    from flask_sse.metrics import metrics_view

    app.config["SSE_METRICS"] = True
    app.add_url_rule("/metrics", view_func=metrics_view)

    @app.post("/metrics/switch")
    def switch_metrics() -> tuple[str, int]:
        """Counting off (``?on=0``) or back on, between runs of ``bench.overhead``."""
        from flask_sse import metrics

        counting = getattr(app, "bench_counting", None) or metrics._on  # noqa: SLF001
        app.bench_counting = counting  # type: ignore[attr-defined]
        metrics._on = counting if request.args.get("on") == "1" else None  # noqa: SLF001
        return "", 204
if os.environ.get("BENCH_HEAP"):  # python -m bench.memory
    from bench.memory import heap_view, start_tracing

    start_tracing()
    app.add_url_rule("/heap", view_func=heap_view)
app.config["REDIS_URL"] = os.environ["BENCH_REDIS_URL"]
app.config.from_prefixed_env("BENCH")  # BENCH_SSE_DRAIN_SECONDS=0 sets SSE_DRAIN_SECONDS
app.register_blueprint(sse, url_prefix="/stream")


@app.post("/publish")
def publish() -> tuple[str, int]:
    sse.publish(request.get_data(as_text=True), channel=request.args.get("channel", "bench"))
    return "", 204
