"""storage/fastpath.py: ``GET /v1/record`` answered without Flask's dispatch, exactly as the
route answers it, and every other request left to Flask (real app over real LMDB)."""
from __future__ import annotations

from urllib.parse import urlencode

import pytest
from werkzeug.test import run_wsgi_app, EnvironBuilder

from sdht.pow import mint
from storage.fastpath import HotReads

MSGPACK = {"Content-Type": "application/msgpack"}


def _both(app, path: str, **environ) -> tuple:
    """The answer of the app as it runs (fast path in front) and of Flask alone behind it."""
    answers = []
    inner = _inner(app)
    for wsgi in (app.wsgi_app, inner):
        env = EnvironBuilder(path=path, environ_base={"REMOTE_ADDR": "127.0.0.1",
                                                       **environ}).get_environ()
        body, status, headers = run_wsgi_app(wsgi, env, buffered=True)
        answers.append((status, sorted(headers.items()), b"".join(body)))
    return answers[0], answers[1]


def _fast(app) -> HotReads:
    """The fast path, under the limits middleware."""
    layer = app.wsgi_app
    while not isinstance(layer, HotReads):
        layer = layer.app
    return layer


def _inner(app):
    """Flask's WSGI callable, behind the fast path."""
    return _fast(app).wsgi


def _answered_fast(app, path: str) -> bool:
    env = EnvironBuilder(path=path, environ_base={"REMOTE_ADDR": "127.0.0.1"}).get_environ()
    return _fast(app)._answer(env) is not None


def _requests(client, status: str) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    line = f'sdht_requests_total{{method="GET",route="/v1/record",status="{status}"}}'
    return sum(float(row.split()[-1]) for row in text.splitlines() if row.startswith(line))


@pytest.mark.parametrize("key", ["plain-key_1.x~", "héllo wörld", "a/b?c&d=e"])
def test_a_held_key_is_answered_as_the_route_answers_it(app, client, key):
    rec = mint(key, b"v" * 50, 3.0)
    assert client.put("/v1/record", data=rec.pack(), headers=MSGPACK).status_code == 201
    path = "/v1/record?" + urlencode({"key": key})
    fast, flask = _both(app, path)
    assert fast == flask
    assert _answered_fast(app, path) == ("+" not in path)   # a space arrives as "+": Flask
    assert fast[0].startswith("200") and fast[2] == rec.pack()


@pytest.mark.parametrize("query", ["key=missing", "key=", "", "key=%ff", "key=a&key=b",
                                   "x=1", "key=" + "k" * 600])
def test_anything_else_is_left_to_flask(app, client, query):
    fast, flask = _both(app, "/v1/record?" + query)
    assert fast == flask
    assert not _answered_fast(app, "/v1/record?" + query)
    assert not fast[0].startswith("200")


def test_the_fast_path_counts_its_answers_in_the_route_metrics(client):
    rec = mint("counted", b"v", 3.0)
    client.put("/v1/record", data=rec.pack(), headers=MSGPACK)
    before = _requests(client, "200")
    assert client.get("/v1/record?key=counted").status_code == 200
    assert _requests(client, "200") == before + 1


def test_a_development_node_still_refuses_other_hosts(app, client):
    rec = mint("local", b"v", 3.0)
    client.put("/v1/record", data=rec.pack(), headers=MSGPACK)
    answer = client.get("/v1/record?key=local", environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert answer.status_code == 403
    assert answer.get_json()["error"] == "development_mode"
