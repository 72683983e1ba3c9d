"""The microblog example (examples/microblog.py) on a real gunicorn cluster (issue 14): three
author processes post at once to shared timelines, each through its own node, while one node
is killed (kill -9) and restarted. Afterwards every acknowledged post is in every timeline it
was added to exactly once, each author's posts keep their order, and after repair every replica
of every timeline lists the same items in the same order."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest


from sdht.hashseq import HashSeq
from sdht.kinds import sequence
from sdht.sequence_replicas import fetch

from conftest import ROOT, stop_group, wait_for

sys.path.insert(0, str(ROOT / "examples"))
import microblog  # noqa: E402
from microblog import PUBLIC, Microblog, inbox, user_timeline  # noqa: E402

USERS = ["alice", "bob", "carol"]
POSTS, ANONYMOUS = 12, 3


class Author:
    """One ``microblog.py author`` process, its acknowledged posts read as they come."""

    def __init__(self, user: str, seed: str, log: Path) -> None:
        self.user, self.acked, self.failed = user, [], []
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / "microblog.py"), "--seed", seed,
             "author", user, str(POSTS), "--anonymous", str(ANONYMOUS)],
            stdout=subprocess.PIPE, stderr=self.log, cwd=ROOT, start_new_session=True,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            out = json.loads(line)
            (self.failed if "failed" in out else self.acked).append(out)

    def finish(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout)
        finally:
            stop_group(self.proc, 5)
            self.reader.join(5)
            self.proc.stdout.close()
            self.log.close()


def replica_order(ring, node: str, key: str) -> list[bytes]:
    """The visible order of ``key`` computed from ``node``'s ops alone."""
    objs, _ = fetch(ring.quorum, node, key)
    seq = HashSeq()
    for obj in objs:
        seq.apply(sequence.from_wire(obj, ring.params).op)
    assert seq.orphans == 0, f"{node} holds ops of {key!r} whose dependencies it lacks"
    return seq.ids()


def test_concurrent_authors_through_a_node_kill(cluster, tmp_path):
    ring, nodes = cluster(3)   # n=3, r=2, w=2: a write and a read survive one node down
    blog = Microblog(ring)
    for user in USERS:
        assert blog.register(user)
    assert not blog.register("alice")      # names are unique
    for a in USERS:
        for b in USERS:
            if a != b:
                blog.follow(a, b)
    assert sorted(blog.followers("alice")) == ["bob", "carol"]

    authors = [Author(u, nodes[i].id, tmp_path / f"author-{u}.log")
               for i, u in enumerate(USERS)]
    acked = lambda: sum(len(a.acked) for a in authors)   # noqa: E731
    wait_for(lambda: acked() >= 6, 120, what="posts before the kill")
    victim = nodes[1]
    victim.kill()
    before = acked()
    wait_for(lambda: acked() >= before + 6, 120, what="posts while a node is down")
    victim.restart()
    for a in authors:
        a.finish(400)
    assert acked() >= 3 * (POSTS + ANONYMOUS) - 3, [a.failed for a in authors]

    # What each timeline must hold: every acknowledged post added to it.
    expected: dict[str, set[str]] = {PUBLIC: set()}
    for a in authors:
        for post in a.acked:
            expected[PUBLIC].add(post["path"])
            if post["user"] is not None:
                expected.setdefault(user_timeline(a.user), set()).add(post["path"])
                for follower in USERS:
                    if follower != a.user:
                        expected.setdefault(inbox(follower), set()).add(post["path"])

    ring.repair()
    for key, paths in expected.items():
        items = ring.sequence(key).items()
        counts = Counter(ref["path"] for ref in items)
        assert all(counts[p] == 1 for p in paths), f"{key}: lost or doubled posts"
        assert max(counts.values()) == 1, f"{key}: a post appears twice"
        for user in USERS:   # each author's posts keep their order
            mine = [int(ref["path"].rsplit("-", 1)[1].rstrip("/")) for ref in items
                    if ref["author"] == user]
            assert mine == sorted(mine), f"{key}: {user}'s posts out of order"

    def replicas_agree() -> bool:
        ring.repair()
        return all(len({tuple(replica_order(ring, node, key))
                        for node in ring.preference(key)}) == 1 for key in expected)
    wait_for(replicas_agree, 60, interval=0.5, what="identical replicas after repair")
    for key in expected:
        merged = [it.id for it in ring.sequence(key).entries()]
        assert replica_order(ring, ring.preference(key)[0], key) == merged
    assert microblog.Microblog(ring).read(next(iter(expected[PUBLIC])))["path"]


def test_the_blog_in_process(inprocess_cluster):
    ring, _ = inprocess_cluster(3)
    blog = Microblog(ring)
    assert blog.register("ann") and blog.register("ben") and not blog.register("ann")
    blog.follow("ben", "ann")
    blog.follow("ben", "ann")                       # following twice is following once
    assert blog.following("ben") == ["ann"] and blog.followers("ann") == ["ben"]
    path = blog.post("ann", "hello", "first")
    assert path == "/ann/hello/" and blog.read(path)["body"] == "first"
    with pytest.raises(microblog.PathTaken):
        blog.post("ann", "hello", "again")          # a path is never taken twice
    anon = blog.post_anonymous("who am I")
    assert anon != path and blog.read(anon)["author"] is None
    assert [p["path"] for p in blog.timeline(PUBLIC)] == [anon, path]   # newest first
    assert [p["path"] for p in blog.timeline(inbox("ben"))] == [path]
    assert [p["path"] for p in blog.timeline(user_timeline("ann"))] == [path]
    blog.unfollow("ben", "ann")
    assert blog.following("ben") == [] and blog.followers("ann") == []
    blog.post("ann", "later", "second")
    assert [p["path"] for p in blog.timeline(inbox("ben"))] == [path]
    with pytest.raises(KeyError):
        blog.follow("ben", "nobody")
