"""Node metrics: health figures and /metrics, in-process and aggregated over gunicorn workers."""
from __future__ import annotations

import re

import msgpack
import requests

from conftest import wait_for
from sdht.pow import mint
from sdht.transport import Transport
from storage.app import create_app


def sample(text: str, name: str, **labels: str) -> float:
    """Return the value of one sample in a Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name:
            got = ",".join(sorted((m.group(2) or "").split(","))) if m.group(2) else ""
            if got == want:
                return float(m.group(3))
    return 0.0


class TestInProcess:
    def test_two_apps_in_one_process_keep_their_own_registries(self, tmp_path):
        a = create_app({"DATA_DIR": str(tmp_path / "a"), "NODE_ID": "127.0.0.1:1"})
        b = create_app({"DATA_DIR": str(tmp_path / "b"), "NODE_ID": "127.0.0.1:2"})
        a.test_client().get("/v1/record?key=x")
        assert sample(a.test_client().get("/metrics").text, "sdht_requests_total",
                      route="/v1/record", method="GET", status="404") == 1
        assert sample(b.test_client().get("/metrics").text, "sdht_requests_total",
                      route="/v1/record", method="GET", status="404") == 0

    def test_health_has_the_node_figures(self, client):
        health = client.get("/v1/health").get_json()
        for field in ("node", "epoch", "records", "bytes", "revision", "uptime", "location",
                      "requests", "errors", "error_rate", "mean_response_ms", "heartbeat",
                      "window"):
            assert field in health, field
        assert health["window"] == "since_start"
        assert health["requests"] == 0  # health polls do not count

        client.put("/v1/record", data=mint("k", 1, 3.0).pack())
        client.put("/v1/record", data=b"\xc1")  # malformed: an error
        client.get("/v1/record?key=nope")       # a miss: not an error
        health = client.get("/v1/health").get_json()
        assert health["requests"] == 3 and health["errors"] == 1
        assert abs(health["error_rate"] - 1 / 3) < 1e-9
        assert health["mean_response_ms"] > 0 and health["records"] == 1

    def test_metrics_count_writes_by_outcome_and_migration(self, client):
        rec = mint("k", 1, 3.0)
        client.put("/v1/record", data=rec.pack())
        client.put("/v1/record", data=rec.pack())
        client.put("/v1/record", data=b"junk")
        batch = msgpack.packb([mint(f"m{i}", i, 3.0).to_wire() for i in range(5)])
        client.post("/v1/records", data=batch, content_type="application/msgpack",
                    headers={"X-SDHT-Migration": "1"})
        text = client.get("/metrics").text
        assert sample(text, "sdht_writes_total", outcome="stored") == 6
        assert sample(text, "sdht_writes_total", outcome="same") == 1
        assert sample(text, "sdht_writes_total", outcome="invalid") == 1
        assert sample(text, "sdht_migration_records_received_total") == 5
        assert sample(text, "sdht_records") == 6
        assert sample(text, "sdht_request_duration_seconds_count", route="/v1/record",
                      method="PUT", status="201") == 1


def test_figures_are_the_nodes_across_two_workers(start_node):
    node = start_node(workers=2)
    transport = Transport()
    try:
        for i in range(12):
            transport.put_record(node.id, mint(f"key{i}", i, 3.0))
    finally:
        transport.close()
    # Each fresh connection may land on either worker; both must report the node's totals.
    pids: set[int] = set()

    def both_workers_agree() -> bool:
        health = requests.get(f"{node.url}/v1/health", timeout=5).json()
        assert health["requests"] == 12, health
        assert health["records"] == 12 and health["revision"] == 12
        pids.add(health["pid"])
        return len(pids) == 2

    wait_for(both_workers_agree, 20, interval=0.01, what="answers from both workers")
    text = requests.get(f"{node.url}/metrics", timeout=5).text
    assert sample(text, "sdht_requests_total", route="/v1/record", method="PUT",
                  status="201") == 12
    assert sample(text, "sdht_writes_total", outcome="stored") == 12
    assert sample(text, "sdht_records") == 12


def test_a_worker_file_still_being_created_does_not_fail_the_figures(start_node):
    # prometheus_client creates a worker's file before it sizes it; a scrape in between must
    # still answer (it answered /v1/health with a 500 while a restarted node's worker began).
    node = start_node(workers=2)
    (node.data_dir / "prometheus" / "counter_999999.db").touch()
    transport = Transport()
    try:
        transport.put_record(node.id, mint("key", 1, 3.0))
        assert transport.health(node.id)["requests"] == 1
    finally:
        transport.close()
    text = requests.get(f"{node.url}/metrics", timeout=5).text
    assert sample(text, "sdht_writes_total", outcome="stored") == 1
