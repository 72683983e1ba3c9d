"""The node's hints store (storage/hints.py) opened while another thread of the worker writes.

py-lmdb's ``open_db()`` without a transaction waits for LMDB's write lock holding the GIL, while
the thread holding the lock needs the GIL to finish its write: a gunicorn worker whose first
hint arrived during a write hung for good. The scenario runs in a subprocess so that a hang is
a bounded failure, not a hung test run.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCENARIO = """
import sys, tempfile, threading
import lmdb
from storage.hints import Hints
env = lmdb.open(tempfile.mkdtemp(), max_dbs=8, map_size=1 << 26)
data = env.open_db(b"data")
writing = threading.Event()

def writer():
    with env.begin(write=True) as txn:
        writing.set()
        for i in range(200_000):
            txn.put(b"k%d" % i, b"v", db=data)

thread = threading.Thread(target=writer)
thread.start()
writing.wait()
hints = Hints(env)                # while the write transaction is open
thread.join()
hints.add("127.0.0.1:1", [b"entry"])
print("opened")
"""


def test_hints_open_while_another_thread_writes(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", SCENARIO], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("opened")
