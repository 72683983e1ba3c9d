"""The storage node as it runs: real gunicorn processes (2 workers) on free ports.

Refusals over real HTTP, a fuzz of every route, conflicting writers on two workers, durability
across ``kill -9``, and the ``sdht-storage`` command itself.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest
import requests

from conftest import ROOT, NodeProcess, Operator, free_port, wait_for
from sdht.pow import mint
from sdht.ring import Member, RingView
from sdht.trust import Keys, new_private_key
from sdht.wire import DATE_HEADER, SIGNATURE_HEADER, SIGNER_HEADER
from sdht.kinds.register import Record, from_packed, winner
from sdht.params import DEFAULTS as DEFAULT_PARAMS
from sdht.wire import now_us
from sdht.ring import RING_SIZE
from storage.app import EPOCH_HEADER, create_app
from test_storage_app import BAD, LIMITS

TIMEOUT = 10  # seconds, every request: a hung node fails the test instead of hanging it
LIMIT_ENV = {"SDHT_MAX_KEY_BYTES": str(LIMITS["max_key_bytes"]),
             "SDHT_MAX_VALUE_BYTES": str(LIMITS["max_value_bytes"]),
             "SDHT_MAX_BODY_BYTES": "4096", "SDHT_MAX_BATCH": "50"}


def health(node: NodeProcess) -> dict:
    return requests.get(f"{node.url}/v1/health", timeout=TIMEOUT).json()


def state(node: NodeProcess) -> tuple[int, int, int]:
    h = health(node)
    return h["records"], h["revision"], h["bytes"]


def put(node: NodeProcess, rec: Record, session=requests) -> requests.Response:
    return session.put(f"{node.url}/v1/record", data=rec.pack(), timeout=TIMEOUT,
                       headers={"Content-Type": "application/msgpack"})


def get(node: NodeProcess, key: str, session=requests) -> Record | None:
    resp = session.get(f"{node.url}/v1/record", params={"key": key}, timeout=TIMEOUT)
    if resp.status_code == 404:
        return None
    assert resp.status_code == 200, resp.text
    return from_packed(resp.content, DEFAULT_PARAMS)


def assert_clean_log(node: NodeProcess) -> None:
    """No worker logged a traceback (an unhandled exception, or a worker that died)."""
    log = Path(node.log.name).read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """A real node with small limits (32-byte keys, 64-byte values, 4 KiB bodies, 50 per batch)
    and keys (it takes only the operator's rings), shared by the module's refusal tests."""
    node = NodeProcess(tmp_path_factory.mktemp("limited") / "data")
    node.operator = Operator()
    node.env = {**LIMIT_ENV, **node.operator.node_env(node.id)}
    node.start()
    assert put(node, mint("seed", 1, 3.0)).status_code == 201
    yield node
    node.stop()
    assert_clean_log(node)


class TestRefusalsOverHTTP:
    @pytest.mark.parametrize("name,body,status", BAD, ids=[c[0] for c in BAD])
    def test_bad_record(self, limited, name, body, status):
        before = state(limited)
        resp = requests.put(f"{limited.url}/v1/record", data=body, timeout=TIMEOUT,
                            headers={"Content-Type": "application/msgpack"})
        assert resp.status_code == status, resp.text
        assert resp.headers["Content-Type"].startswith("application/json")
        assert set(resp.json()) >= {"error", "message"}
        assert EPOCH_HEADER in resp.headers
        assert state(limited) == before

    @pytest.mark.parametrize("method,path,status", [
        ("GET", "/v1/nope", 404), ("GET", "/", 200), ("POST", "/v1/health", 405),
        ("DELETE", "/v1/record", 405), ("PATCH", "/v1/ring", 405),
        # a range scan needs a signed request before its arguments are even read
        ("GET", "/v1/range?start=9&end=3", 401), ("GET", "/v1/range?start=%C2%B2&end=3", 401)])
    def test_routes_and_methods(self, limited, method, path, status):
        resp = requests.request(method, limited.url + path, timeout=TIMEOUT)
        assert resp.status_code == status
        assert EPOCH_HEADER in resp.headers
        if status >= 400:
            assert resp.json()["error"]

    def test_keys_guard_the_ring_and_admin_routes(self, limited):
        keys = limited.operator.keys()
        view = RingView(5, (Member(limited.id, tokens=4),), {**DEFAULT_PARAMS, **LIMITS})
        ring = view.signed(keys.sign_ring(view.body())).to_json()
        unsigned = view.to_json()
        everything = f"/v1/range?start=0&end={RING_SIZE}"
        stranger = Keys((), new_private_key()).sign_request("DELETE", everything, b"")
        assert requests.put(f"{limited.url}/v1/ring", json=unsigned,
                            timeout=TIMEOUT).status_code == 403
        for headers in ({}, stranger):
            assert requests.delete(limited.url + everything, headers=headers,
                                   timeout=TIMEOUT).status_code == 401
        assert health(limited)["epoch"] == 0 and health(limited)["records"] >= 1
        ok = requests.put(f"{limited.url}/v1/ring", json=ring, timeout=TIMEOUT)
        assert ok.status_code == 200
        stale = requests.put(f"{limited.url}/v1/ring", json=ring, timeout=TIMEOUT)
        assert stale.status_code == 409 and stale.json()["ring"]["epoch"] == 5
        # Both workers answer with the new epoch: it lives in LMDB, not in one worker's memory.
        for _ in range(10):
            resp = requests.get(f"{limited.url}/v1/health", timeout=TIMEOUT)
            assert resp.headers[EPOCH_HEADER] == "5" and resp.json()["epoch"] == 5


# -- fuzz -------------------------------------------------------------------------------------

def random_obj(rnd: random.Random, depth: int = 0, plain: bool = False):
    """A random msgpack-encodable value, with extension types unless ``plain``."""
    kind = rnd.randrange(10 if depth < 4 else 7)
    if plain and kind == 5:
        kind = 4
    if kind == 0:
        return rnd.choice([None, True, False])
    if kind == 1:
        return rnd.choice([0, -1, 1, 2**63 - 1, -2**63, 2**64 - 1, rnd.randrange(-999, 999)])
    if kind == 2:
        return rnd.choice([0.0, -0.0, 1.5, float("inf"), float("nan"), rnd.random()])
    if kind == 3:
        return "".join(rnd.choice("kvtwnd\x00é☃\U0001f600") for _ in range(rnd.randrange(8)))
    if kind == 4:
        return rnd.randbytes(rnd.randrange(70))
    if kind == 5:
        if rnd.random() < 0.5:  # type -1, which msgpack decodes itself
            return msgpack.Timestamp(rnd.randrange(2**34), rnd.randrange(10**9))
        return msgpack.ExtType(rnd.randrange(128), rnd.randbytes(rnd.choice([0, 1, 4, 8, 12])))
    if kind == 6:
        return rnd.choice(["k", "v", "t", "w", "n", "d", "x" * rnd.randrange(2000)])
    if kind in (7, 8):
        return [random_obj(rnd, depth + 1, plain) for _ in range(rnd.randrange(5))]
    return {random_obj(rnd, 9, plain): random_obj(rnd, depth + 1, plain)
            for _ in range(rnd.randrange(5))}


def mutate(rnd: random.Random, rec: Record) -> bytes:
    """A valid record, damaged: bytes flipped, cut or inserted, or one field replaced."""
    raw = bytearray(rec.pack())
    how = rnd.randrange(4)
    if how == 0:
        for _ in range(rnd.randrange(1, 4)):
            raw[rnd.randrange(len(raw))] = rnd.randrange(256)
    elif how == 1:
        del raw[rnd.randrange(len(raw)):]
    elif how == 2:
        raw[rnd.randrange(len(raw)):0] = rnd.randbytes(rnd.randrange(1, 6))
    else:
        obj = rec.to_wire()
        obj[rnd.choice("kvtwnd")] = random_obj(rnd)
        return packb(obj)
    return bytes(raw)


def packb(obj) -> bytes:
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (ValueError, TypeError, OverflowError):  # e.g. an unhashable key sneaked in
        return b"\xc1"


def random_body(rnd: random.Random, pool: list[Record]) -> bytes:
    mode = rnd.randrange(6)
    if mode == 0:
        return rnd.randbytes(rnd.randrange(300))
    if mode == 1:
        return packb(random_obj(rnd))
    if mode == 2:
        return mutate(rnd, rnd.choice(pool))
    if mode == 3:  # batches: records, damaged records, keys
        items = [rnd.choice([rnd.choice(pool).to_wire(), random_obj(rnd), rnd.choice(pool).key])
                 for _ in range(rnd.randrange(6))]
        return packb(items)
    if mode == 4:  # rings, mostly broken
        ring = {"epoch": rnd.choice([1, -1, 2**70, "1", None, 1.5]),
                "members": rnd.choice([[], [{"id": "127.0.0.1:1", "tokens": rnd.choice(
                    [1, 0, 10**9, "x"]), "key": rnd.choice(["ab" * 32, "zz", 7, None])}],
                    "x", None]),
                "params": {rnd.choice(list(DEFAULT_PARAMS)): random_obj(rnd, 4)}}
        if rnd.random() < 0.5:   # the signed form: a signature of the right or wrong shape
            ring["signature"] = rnd.choice(["ab" * 64, "zz" * 64, "ab", 5, None,
                                            STRANGER.sign_ring({"epoch": 1})])
        text = json.dumps(ring, default=repr, skipkeys=True)
        cut = rnd.randrange(len(text) + 1) if rnd.random() < 0.3 else len(text)
        return text[:cut].encode()
    return json.dumps({"key": random_obj(rnd, 4) if rnd.random() < 0.5 else "k",
                       "value": rnd.choice([1, "x", None, [1]]), "rounds": rnd.choice([1, -1]),
                       "purge": rnd.choice([True, 1]), "ranges": random_obj(rnd, 4)},
                      default=repr, skipkeys=True).encode()


NUMBERS = ["", "0", "1", "-1", "5", str(RING_SIZE - 1), str(RING_SIZE), str(RING_SIZE + 1),
           "²", "٣", "9" * 30, "0x10", "1e3", " 7", "%FF", "nan"]


def random_query(rnd: random.Random, pool: list[Record]) -> dict:
    """Query arguments, kept under gunicorn's 4 KiB request line (beyond it gunicorn itself
    answers 414, in HTML, before the app sees the request)."""
    query = {}
    for name in ("key", "start", "end", "limit", "after"):
        if rnd.random() < 0.6:
            query[name] = rnd.choice([rnd.choice(NUMBERS), rnd.choice(pool).key,
                                      rnd.randbytes(8).hex(), "k" * rnd.randrange(100),
                                      b"\xed\xb3\xbf\xff"])  # a UTF-8 surrogate, invalid UTF-8
    if rnd.random() < 0.1:
        query["key"] = "k" * rnd.randrange(1000, 1100)  # around max_key_bytes (1024)
    return query


#: Signs rings and requests that no node here trusts.
STRANGER = Keys((), new_private_key())


class TestFuzz:
    def test_random_requests_never_break_the_node(self, start_node):
        # Keyed, so the signed routes check their random signatures rather than skip them.
        node = start_node(env={"SDHT_MAX_BODY_BYTES": "65536"}, operator=Operator())
        rnd = random.Random(int(os.environ.get("SDHT_FUZZ_SEED", "20261121")))
        pool = [mint(f"fuzz{i}", random_obj(rnd, 3, plain=True) if i % 3 else None, 3.0,
                 deleted=i % 3 == 0)
                for i in range(24)]
        app = create_app({"DATA_DIR": str(node.data_dir.parent / "routes")})
        routes = [(rule.rule, sorted(rule.methods - {"HEAD", "OPTIONS"}))
                  for rule in app.url_map.iter_rules()]
        session = requests.Session()
        failures, count = [], 0
        for i in range(2500):
            path, methods = rnd.choice(routes)
            path = path.replace("<path:filename>", rnd.choice(["x", "../../etc/passwd", "%00"]))
            method = rnd.choice(methods) if rnd.random() < 0.9 else rnd.choice(
                ["GET", "PUT", "POST", "DELETE", "PATCH"])
            headers = {"Content-Type": rnd.choice(["application/msgpack", "application/json",
                                                   "text/plain", ""])}
            if rnd.random() < 0.2:
                headers.update({SIGNER_HEADER: rnd.choice(["operator", node.id, "x"]),
                                DATE_HEADER: rnd.choice(["", "1", str(int(time.time()))]),
                                SIGNATURE_HEADER: rnd.choice(["", "zz", "ab" * 64])})
            body = random_body(rnd, pool)
            query = random_query(rnd, pool)
            try:
                resp = session.request(method, node.url + path, params=query, data=body,
                                       headers=headers, timeout=TIMEOUT)
            except requests.RequestException as exc:
                failures.append((i, method, path, repr(exc)))
                continue
            count += 1
            # Routes that run the ring library (the page, the /kv-store gateway) answer 503
            # on this node, which is in no ring.
            if resp.status_code >= 500 and not (path.startswith(("/v1/ui/", "/kv-store/")) and
                                                resp.status_code in (502, 503, 504)):
                failures.append((i, method, path, resp.status_code, resp.text[:200]))
            elif resp.status_code >= 400:
                assert EPOCH_HEADER in resp.headers
                resp.json()  # every refusal has a JSON body
        assert not failures, failures[:10]
        assert count == 2500
        assert node.healthy()
        ring = requests.get(f"{node.url}/v1/ring", timeout=TIMEOUT)
        # A fuzzed ring may have been accepted, and with it a higher min_work.
        min_work = ring.json()["params"]["min_work"] if ring.status_code == 200 else 3.0
        assert put(node, mint("after-fuzz", "still serving", min_work)).status_code == 201
        assert_clean_log(node)


# -- concurrency and durability -----------------------------------------------------------------

class TestConcurrency:
    def test_conflicting_writers_leave_the_highest_score_on_disk(self, start_node):
        node = start_node(workers=2)
        keys = [f"hot{i}" for i in range(20)]
        now = now_us()
        written: list[Record] = []
        lock = threading.Lock()
        errors: list[str] = []

        def writer(seed: int) -> None:
            rnd = random.Random(seed)
            session = requests.Session()
            for round_ in range(6):
                batch = []
                for key in rnd.sample(keys, 10):
                    # Work and time vary so that arrival order is not score order.
                    rec = mint(key, {"writer": seed, "round": round_}, rnd.choice([3.0, 3.5, 4.0]),
                               t=now - rnd.randrange(0, 20_000_000))
                    batch.append(rec)
                try:
                    for rec in batch[:5]:
                        status = put(node, rec, session).status_code
                        if status not in (200, 201, 409):
                            errors.append(f"PUT {status}")
                    resp = session.post(f"{node.url}/v1/records", timeout=TIMEOUT,
                                        data=msgpack.packb([r.to_wire() for r in batch[5:]]))
                    if resp.status_code != 200:
                        errors.append(f"POST {resp.status_code}")
                except requests.RequestException as exc:
                    errors.append(repr(exc))
                    return
                with lock:
                    written.extend(batch)

        threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(t.is_alive() for t in threads)
        assert not errors, errors[:5]
        assert len(written) == 8 * 6 * 10
        decay = DEFAULT_PARAMS["decay"]
        for key in keys:
            expected = winner([r for r in written if r.key == key], decay)
            held = get(node, key)
            assert held is not None and held.digest == expected.digest, key
        assert health(node)["records"] == len(keys)
        assert_clean_log(node)


class TestDurability:
    def test_acknowledged_writes_survive_kill_9(self, start_node):
        node = start_node(name="durable")
        acked = []
        for i in range(30):
            rec = mint(f"durable{i}", {"i": i}, 3.0)
            assert put(node, rec).status_code == 201
            acked.append(rec)
        last = mint("the-last-one", "acknowledged just before the kill", 3.0)
        assert put(node, last).status_code == 201
        node.kill()  # SIGKILL to the whole group, right after the acknowledgement
        acked.append(last)
        port = node.port
        again = NodeProcess(node.data_dir, port=port).start()  # same data dir, same port
        try:
            for rec in acked:
                held = get(again, rec.key)
                assert held is not None and held.digest == rec.digest, rec.key
            assert health(again)["records"] == len(acked)
            # and it still takes writes after recovery
            late = mint("after-restart", 1, 3.0)
            assert put(again, late).status_code == 201
            again.kill()
        finally:
            again.stop()
        moved = NodeProcess(node.data_dir).start()  # the same data on a new port
        try:
            assert moved.port != port
            for rec in acked + [late]:
                assert get(moved, rec.key).digest == rec.digest, rec.key
        finally:
            moved.stop()


# -- the commands ------------------------------------------------------------------------------

def run_server(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "storage.server", *args], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=60)


class TestCommands:
    def test_a_keyless_node_refuses_other_addresses_and_says_why(self, tmp_path):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SDHT_")}
        done = subprocess.run([sys.executable, "-m", "storage.server", "-p", "8000", "--data",
                               str(tmp_path / "d"), "--host", "192.0.2.1"], cwd=ROOT,
                              env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2 and "serves loopback only" in done.stderr
        assert not (tmp_path / "d").exists()

    def test_a_keyless_node_says_it_is_in_development_mode(self, node):
        assert "development mode, no key" in Path(node.log.name).read_text()
        assert requests.get(f"{node.url}/v1/health", timeout=TIMEOUT).json()["mode"] == \
            "development mode, no key"

    def test_help(self):
        done = run_server("--help")
        assert done.returncode == 0
        for option in ("--port", "--data", "--workers", "--host", "--node-id"):
            assert option in done.stdout

    @pytest.mark.parametrize("args", [
        [], ["-p", "8000"], ["--data", "x"], ["-p", "0", "--data", "x"],
        ["-p", "abc", "--data", "x"], ["-p", "70000", "--data", "x"],
        ["-p", "8000", "--data", "x", "--workers", "0"],
        ["-p", "8000", "--data", "x", "--node-id", "no-port"],
        ["-p", "8000", "--data", "{file}/under-a-file"], ["--bogus"],
        # no keys: another address than loopback is refused before anything binds
        ["-p", "8000", "--data", "x", "--host", "0.0.0.0"],
        ["-p", "8000", "--data", "x", "--host", "::"]])
    def test_bad_arguments_exit_non_zero_with_one_error_line(self, tmp_path, args):
        afile = tmp_path / "file"
        afile.write_text("")
        args = [a.format(file=afile) for a in args]
        done = run_server(*[a if a != "x" else str(tmp_path / "d") for a in args])
        assert done.returncode != 0
        assert "Traceback" not in done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, done.stderr
        assert not (tmp_path / "d").exists()  # refused before anything was created

    def test_plain_gunicorn_with_the_environment_serves(self, tmp_path):
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SDHT_DATA_DIR": str(tmp_path / "data"),
               "SDHT_NODE_ID": f"127.0.0.1:{port}"}
        with open(tmp_path / "gunicorn.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers",
                 "2", "storage.app:create_app()"], cwd=tmp_path, env=env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
            try:
                def serving():
                    assert proc.poll() is None, (tmp_path / "gunicorn.log").read_text()
                    try:
                        return requests.get(f"http://127.0.0.1:{port}/v1/health", timeout=1)
                    except requests.RequestException:
                        return None
                resp = wait_for(serving, 30, what="plain gunicorn to serve")
                body = resp.json()
                assert body["node"] == f"127.0.0.1:{port}" and body["records"] == 0
                rec = mint("plain", 1, 3.0)
                assert requests.put(f"http://127.0.0.1:{port}/v1/record", data=rec.pack(),
                                    timeout=TIMEOUT).status_code == 201
                assert (tmp_path / "data").is_dir()
            finally:
                os.killpg(proc.pid, signal.SIGTERM)  # by PID: the master and its workers
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
        assert proc.returncode == 0, (tmp_path / "gunicorn.log").read_text()[-2000:]
