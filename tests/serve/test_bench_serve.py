"""The load test of ``benchmarks/bench_serve.py``, bounded: a 1,000-entry index, 2 s at 5 requests/s,
the service in its own process on loopback. Checks that every request was answered (no error) and
that the figures are reported; speed is measured by the script itself, never asserted here."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_serve.py"


@pytest.mark.slow  # two processes start (~15 s on 2 busy cores); bounded to 2 s of load
def test_short_load_run(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_serve", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "figures.json"
    figures = bench.main(["--entries", "1000", "--seconds", "2", "--rate", "5", "--model", "osnet_x0_25",
                          "--input-size", "64", "32", "--backend", "torch", "--index-dir", str(tmp_path / "idx"),
                          "--warmup", "2", "--json", str(out)])
    assert figures["requests"] == 10 and figures["errors"] == 0 and figures["statuses"] == {"200": 10}
    assert figures["entries"] == 1000 and figures["dim"] == 512 and figures["input_size"] == [64, 32]
    assert 0 < figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    assert json.loads(out.read_text()) == figures
    printed = capsys.readouterr().out
    assert "requests/s answered" in printed and "p99" in printed
    args = argparse.Namespace(checkpoint=None, model="osnet_x0_25", pretrained=None, backend="torch", input_size=[64, 32],
                              model_is_onnx=False, entries=1000, index_dir=str(tmp_path / "idx"), kind="flat")
    assert bench.build_index(args) == tmp_path / "idx" and "reusing" in capsys.readouterr().out
    args.input_size = [32, 16]  # another model input: the index is rebuilt
    assert bench.build_index(args) == tmp_path / "idx" and "built" in capsys.readouterr().out
