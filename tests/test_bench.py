"""The benchmark harness still runs: a tiny smoke run against this project and the ceiling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, _need

pytestmark = pytest.mark.integration


def quick_bench(tmp_path: Path, *arguments: str) -> dict[str, Any]:
    """``python -m bench --quick --repeat 1`` with ``arguments``: the results it wrote."""
    _need("redis-server")
    output = tmp_path / "results"
    finished = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--repeat", "1", *arguments,
         "--output", str(output)],
        cwd=ROOT, timeout=300, capture_output=True, text=True,
    )
    assert finished.returncode == 0, f"the benchmark failed:\n{finished.stderr[-4000:]}"
    results: dict[str, Any] = json.loads(output.with_suffix(".json").read_text())
    return results


def test_the_benchmark_serves_this_project_with_metrics_on(tmp_path: Path) -> None:
    """``--metrics``: how the cost of counting is measured, against a run without it."""
    results = quick_bench(tmp_path, "--servers", "ours", "--metrics")
    assert results["metrics"] is True
    (run,) = results["runs"]["ours"]
    assert run["metrics"]["events_delivered"] > 0  # the server counted
    for scenario, figures in run.items():
        assert figures.get("lost", 0) == figures.get("duplicated", 0) == 0, scenario


def test_a_quick_benchmark_run_counts_every_delivery(tmp_path: Path) -> None:
    """Ours beside the ceiling and nchan: every scenario delivers all, once, in order."""
    _need("nginx", "nginx-core libnginx-mod-nchan (or: bash bench/setup)")
    results = quick_bench(tmp_path, "--servers", "ours", "ceiling", "nchan redis")
    for name in ("ours", "ceiling", "nchan redis"):
        (run,) = results["runs"][name]
        for scenario, figures in run.items():
            if scenario != "publish call":
                assert figures["lost"] == figures["duplicated"] == figures["out_of_order"] == 0, (
                    name, scenario
                )
        assert run["saturation"]["deliveries_per_s"] > 0
        assert run["idle then burst"]["redis_connections"] <= 3
    for name in ("ours", "ceiling", "nchan redis"):
        (run,) = results["runs"][name]
        assert run["many channels"]["events_per_s"] > 0
    for name in ("ours", "nchan redis"):  # the ceiling has no publish call of its own
        (run,) = results["runs"][name]
        assert run["publish call"]["caller_us"] > 0
    assert "| N=50: deliveries/s at saturation |" in results["table"]
    assert "| 20 channels x 1 stream: events/s |" in results["table"]


def test_a_quick_storm_run_moves_every_client_without_loss() -> None:
    _need("redis-server")
    finished = subprocess.run(
        [sys.executable, "-m", "bench.storm", "--streams", "40", "--bystanders", "5",
         "--seconds", "4", "--drain", "1", "--admission", "50"],
        cwd=ROOT, check=True, timeout=300, capture_output=True, text=True,
    )
    rows = [line for line in finished.stdout.splitlines() if line.startswith("| all at once")
            or line.startswith("| spread")]
    assert len(rows) == 3, finished.stdout
    for row in rows:
        lost, duplicated = row.strip("| ").split(" | ")[-2:]
        assert (lost, duplicated) == ("0", "0"), row


def test_the_fan_out_measure_writes_every_event_to_every_socket() -> None:
    """``bench.fanout``: the package's fan-out and the bare loop each wrote all they were given."""
    finished = subprocess.run(
        [sys.executable, "-m", "bench.fanout", "--streams", "20", "--rounds", "2"],
        cwd=ROOT, check=True, timeout=120, capture_output=True, text=True,
    )
    assert "the package's own" in finished.stdout, finished.stdout


def test_the_hub_path_measure_delivers_every_message() -> None:
    """``bench.hub_path``: the hub's path and the bare loop each wrote every message to its stream."""
    _need("redis-server")
    finished = subprocess.run(
        [sys.executable, "-m", "bench.hub_path", "--channels", "20", "--rounds", "1"],
        cwd=ROOT, timeout=120, capture_output=True, text=True,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "the package adds" in finished.stdout, finished.stdout
