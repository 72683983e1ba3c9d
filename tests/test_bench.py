"""Smoke test of ``bench/bench.py``: it runs end to end with tiny sizes and no peers.

No timing is asserted (the machine is shared and noisy); this only keeps the bench from rotting.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


class TestBench:
    def test_tiny_run_prints_a_table_and_writes_json(self, tmp_path: Path) -> None:
        out = tmp_path / "bench.json"
        proc = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "bench.py"), "--no-peers", "--runs", "1",
             "--keys", "200", "--single-keys", "20", "--join-keys", "300",
             "--pow-tries", "2000", "--json", str(out)],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "| workload | system |" in proc.stdout
        assert "cpu:" in proc.stdout and "python:" in proc.stdout
        result = json.loads(out.read_text())
        figures = {(r["workload"], r["system"]) for r in result["rows"]}
        for name in ("set", "get", "set_many 1000", "get_many 1000", "join migration"):
            assert (name, "sdht") in figures
        assert all(r["median"] > 0 for r in result["rows"])
        assert any(r["what"].startswith("sdht join migration") for r in result["ratios"])

    @pytest.mark.parametrize("batch, unit", [(1, "writes"), (10, "keys (batches of 10)")])
    def test_many_clients_runs_writers_at_once_and_prints_their_table(self, batch: int,
                                                                      unit: str) -> None:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "many_clients.py"), "--no-peers", "--runs",
             "1", "--clients", "1,3", "--seconds", "0.5", "--batch", str(batch)],
            cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "cpu:" in proc.stdout and "durability of sdht:" in proc.stdout
        rows = [line for line in proc.stdout.splitlines() if line.startswith("run 1, ")]
        assert [row.split(":")[0] for row in rows] == ["run 1, 1 clients, sdht",
                                                       "run 1, 3 clients, sdht"]
        assert all(float(row.split(": ")[1].split()[0].replace(",", "")) > 0 for row in rows)
        assert all(f" {unit}/s, p50 " in row for row in rows)
        assert "| 3 |" in proc.stdout

    def test_paired_runs_alternating_blocks_and_summarises_each_comparison(
            self, tmp_path: Path) -> None:
        out = tmp_path / "paired.json"
        proc = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "paired.py"), "--no-peers", "--pairs", "3",
             "--single", "20", "--keys", "50", "--json", str(out)],
            cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "cpu:" in proc.stdout and "| sdht / peer | median |" in proc.stdout
        pairs = [line for line in proc.stdout.splitlines() if line.startswith("  set sdht, ")]
        assert [line.split(":")[0] for line in pairs] == [
            f"  set sdht, pair {i}" for i in (1, 2, 3)]
        [row] = json.loads(out.read_text())["rows"]
        assert row["what"] == "set sdht" and len(row["ratios"]) == 3
        assert row["q1"] <= row["median"] <= row["q3"] and all(r > 0 for r in row["ratios"])
