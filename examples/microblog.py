"""A microblog on sdht's public API: the social database the design describes (issue 14).

* Users register unique names: ``ring.register("user:" + name)`` (docs/names.md).
* A post lives at ``/<user>/<title>/``, an anonymous one at ``/<slug>/`` (a random slug drawn
  again until a free one is registered). The path is a unique name, ``"post:" + path``, whose
  value is the post itself: a path is never taken twice, and a post never changes.
* Timelines are sequences (``ring.sequence(key)``, docs/sequences.md) of post references:
  the public timeline, each user's own, and each follower's inbox. Many writers append to
  them at once; no post vanishes, none is doubled, each author's posts keep their order.
* Following is a pair of sequences per user: who they follow, and who follows them.

Run it against a ring (``sdht node start`` makes a local one)::

    python examples/microblog.py --seed 127.0.0.1:8000 register alice
    python examples/microblog.py --seed 127.0.0.1:8000 follow bob alice
    python examples/microblog.py --seed 127.0.0.1:8000 post alice "Hello" "first post"
    python examples/microblog.py --seed 127.0.0.1:8000 timeline inbox:bob
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from typing import Any

import sdht

PUBLIC = "timeline:public"
#: Times a post retries a write whose replicas did not answer, and the first pause (doubling).
RETRIES, BACKOFF = 8, 0.05
#: Slugs an anonymous post draws before it gives up.
SLUG_TRIES = 20


def user_timeline(user: str) -> str:
    """The key of ``user``'s own timeline."""
    return f"timeline:user:{user}"


def inbox(user: str) -> str:
    """The key of ``user``'s inbox: posts of the users they follow."""
    return f"inbox:{user}"


class PathTaken(sdht.SDHTError):
    """A post's path is registered already."""


class Microblog:
    """The microblog on one ring. One instance per writer keeps its timelines' state, so its
    own posts chain one after the other."""

    def __init__(self, ring: sdht.Ring) -> None:
        self.ring = ring
        self._sequences: dict[str, sdht.Sequence] = {}

    def sequence(self, key: str) -> sdht.Sequence:
        """This writer's handle on the timeline ``key``."""
        if key not in self._sequences:
            self._sequences[key] = self.ring.sequence(key)
        return self._sequences[key]

    # -- users and following --------------------------------------------------------------------

    def register(self, name: str, profile: Any = None) -> bool:
        """Register the user ``name``: True if it was free (and is now this caller's)."""
        return self._claim("user:" + name, {"name": name, "profile": profile})

    def user(self, name: str) -> Any:
        """The profile ``name`` registered with, or None for no such user."""
        return self.ring.lookup("user:" + name)

    def follow(self, follower: str, followee: str) -> None:
        """``follower`` follows ``followee``: their posts go to ``follower``'s inbox."""
        for who in (follower, followee):
            if self.user(who) is None:
                raise KeyError(f"no user {who!r}")
        if followee not in self.following(follower):
            self._append(f"following:{follower}", followee)
            self._append(f"followers:{followee}", follower)

    def unfollow(self, follower: str, followee: str) -> None:
        """``follower`` stops following ``followee``."""
        for key, who in ((f"following:{follower}", followee),
                         (f"followers:{followee}", follower)):
            seq = self.sequence(key)
            for item in seq.entries():
                if item.value == who:
                    seq.remove_id(item.id)

    def following(self, user: str) -> list[str]:
        """Whom ``user`` follows."""
        return list(dict.fromkeys(self.sequence(f"following:{user}").items()))

    def followers(self, user: str) -> list[str]:
        """Who follows ``user``."""
        return list(dict.fromkeys(self.sequence(f"followers:{user}").items()))

    # -- posts ----------------------------------------------------------------------------------

    def post(self, user: str, title: str, body: str) -> str:
        """Publish a post of ``user`` at ``/<user>/<title>/``: on the public timeline, the
        user's own and the inboxes of their followers. Returns its path.

        :raises PathTaken: when the path is registered already.
        """
        if "/" in title or not title:
            raise ValueError("a title is a non-empty path segment")
        path = f"/{user}/{title}/"
        ref = {"path": path, "author": user, "t": time.time()}
        if not self._claim("post:" + path, {**ref, "title": title, "body": body}):
            raise PathTaken(path)
        for key in [PUBLIC, user_timeline(user)] + [inbox(f) for f in self.followers(user)]:
            self._append(key, ref)
        return path

    def post_anonymous(self, body: str) -> str:
        """Publish an anonymous post at ``/<slug>/`` on the public timeline; a slug already
        registered is drawn again. Returns its path."""
        for _ in range(SLUG_TRIES):
            path = f"/{secrets.token_urlsafe(6)}/"
            ref = {"path": path, "author": None, "t": time.time()}
            if self._claim("post:" + path, {**ref, "body": body}):
                self._append(PUBLIC, ref)
                return path
        raise PathTaken("no free slug")

    def read(self, path: str) -> Any:
        """The post at ``path``, or None."""
        return self.ring.lookup("post:" + path)

    def timeline(self, key: str, limit: int = 50, before: str | None = None) -> list[dict]:
        """The newest ``limit`` post references of timeline ``key`` (before the item id
        ``before``), newest first."""
        return [{"id": it.id.hex(), **it.value}
                for it in self.sequence(key).page(limit, before)]

    # -- writes that survive a replica going down ---------------------------------------------

    def _claim(self, name: str, value: Any) -> bool:
        owner = os.urandom(16)   # one id for every retry: a retry finds its own claim
        for attempt in range(RETRIES):
            try:
                return self.ring.register(name, value, owner)
            except sdht.QuorumError:
                if attempt == RETRIES - 1:
                    raise
                time.sleep(BACKOFF * 2 ** attempt)
        raise AssertionError("unreachable")

    def _append(self, key: str, item: Any) -> None:
        # A failed append stays pending in its Sequence; flushing it writes that same op
        # again, so a retry never doubles the item.
        seq = self.sequence(key)
        try:
            seq.append(item)
            return
        except sdht.QuorumError:
            pass
        for attempt in range(RETRIES):
            time.sleep(BACKOFF * 2 ** attempt)
            try:
                seq.flush()
                return
            except sdht.QuorumError:
                if attempt == RETRIES - 1:
                    raise


def author(ring: sdht.Ring, user: str, count: int, anonymous: int = 0) -> None:
    """Post ``count`` posts as ``user`` (and ``anonymous`` anonymous ones), printing each
    acknowledged post as a JSON line: a load generator for tests and demos."""
    blog = Microblog(ring)
    for i in range(count + anonymous):
        try:
            if i < count:
                path = blog.post(user, f"post-{i}", f"{user} says {i}")
            else:
                path = blog.post_anonymous(f"anonymous {user} {i}")
        except sdht.SDHTError as exc:
            print(json.dumps({"failed": i, "error": str(exc)[:200]}), flush=True)
            continue
        print(json.dumps({"user": user if i < count else None, "n": i, "path": path}),
              flush=True)


def main(argv: list[str] | None = None) -> int:
    """The command line: register, follow, post, anonymous, read, timeline, author."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", default=os.environ.get("SDHT_SEEDS", "127.0.0.1:8000"))
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("register").add_argument("name")
    f = sub.add_parser("follow")
    f.add_argument("follower")
    f.add_argument("followee")
    p = sub.add_parser("post")
    for arg in ("user", "title", "body"):
        p.add_argument(arg)
    sub.add_parser("anonymous").add_argument("body")
    sub.add_parser("read").add_argument("path")
    t = sub.add_parser("timeline")
    t.add_argument("key", help=f"{PUBLIC}, timeline:user:NAME or inbox:NAME")
    t.add_argument("--limit", type=int, default=20)
    a = sub.add_parser("author")
    a.add_argument("user")
    a.add_argument("count", type=int)
    a.add_argument("--anonymous", type=int, default=0)
    args = parser.parse_args(argv)
    with sdht.connect(*args.seed.split(",")) as ring:
        blog = Microblog(ring)
        if args.command == "register":
            print("registered" if blog.register(args.name) else "taken")
        elif args.command == "follow":
            blog.follow(args.follower, args.followee)
        elif args.command == "post":
            print(blog.post(args.user, args.title, args.body))
        elif args.command == "anonymous":
            print(blog.post_anonymous(args.body))
        elif args.command == "read":
            print(json.dumps(blog.read(args.path)))
        elif args.command == "timeline":
            for ref in blog.timeline(args.key, args.limit):
                print(json.dumps(ref))
        else:
            author(ring, args.user, args.count, args.anonymous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
