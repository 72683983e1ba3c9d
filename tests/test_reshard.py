"""View changes (sdht/reshard.py) over in-process nodes, open and keyed, and who may ask for one
(storage/viewchange.py)."""
from __future__ import annotations

import pytest

from sdht import reshard
from sdht.errors import ConfigError
from sdht.ring import GroupPlacement
from storage.http import store
from storage.shards import seed_ring, shards


def held(apps, node_id: str) -> int:
    """The registers ``node_id`` stores."""
    with apps[node_id].app_context():
        return store().stats()["records"]


class TestViewChange:
    def test_two_to_four_to_three_moves_every_key_to_its_group(self, inprocess_cluster,
                                                                node_apps):
        ring, apps = inprocess_cluster(2)
        for i in range(120):
            ring.set(f"k{i}", i)
        node_apps(2, into=apps)
        ids = sorted(apps)
        report = reshard.view_change(ring.handle, ids, 2)
        assert sorted(report.joined) == ids[2:] and report.params_changed
        view = ring.handle.refresh()
        assert isinstance(view.readers, GroupPlacement) and view.params["n"] == 2
        assert [len(g) for g in view.readers.groups] == [2, 2]
        assert all(ring.get(f"k{i}") == i for i in range(120))
        for group in view.readers.groups:     # each node holds its group's keys, no others
            mine = {f"k{i}" for i in range(120) if tuple(view.readers.for_key(f"k{i}")) == group}
            for node in group:
                assert held(apps, node) == len(mine)
        report = reshard.view_change(ring.handle, ids[1:], 1)
        assert report.removed == [ids[0]]
        view = ring.handle.refresh()
        assert [len(g) for g in view.readers.groups] == [1, 1, 1]
        assert all(ring.get(f"k{i}") == i for i in range(120))
        assert sum(held(apps, n) for n in ids[1:]) == 120

    def test_a_view_change_of_nodes_in_no_ring_makes_the_first_ring(self, node_apps):
        import sdht
        from sdht.inprocess import WSGITransport
        apps = node_apps(4)
        with sdht.Ring(list(apps)[:1], transport=WSGITransport(apps)) as ring:
            reshard.view_change(ring.handle, list(apps), 2)
            view = ring.handle.refresh()
            assert [len(g) for g in view.readers.groups] == [2, 2]
            ring.set("first", 1)
            assert ring.get("first") == 1

    def test_the_same_view_again_changes_nothing(self, inprocess_cluster):
        ring, apps = inprocess_cluster(2)
        reshard.view_change(ring.handle, list(apps), 1)
        epoch = ring.handle.refresh().epoch
        report = reshard.view_change(ring.handle, list(apps), 1)
        assert (report.joined, report.removed, report.params_changed) == ([], [], False)
        assert ring.handle.refresh().epoch == epoch

    def test_an_operator_changes_the_view_of_a_keyed_cluster(self, keyed_cluster, node_apps,
                                                            operator):
        ring, apps = keyed_cluster(2)
        ring.set("kept", 1)
        node_apps(1, into=apps, per_node=operator.node_config)
        reshard.view_change(ring.handle, list(apps), 1)
        view = ring.handle.refresh()
        assert view.signature and len(view.readers.groups) == 3
        assert ring.get("kept") == 1
        client = apps[list(apps)[0]].test_client()   # a keyed node cannot sign: 403
        answer = client.put("/kv-store/view-change",
                            json={"view": list(apps)[:2], "repl-factor": 1})
        assert answer.status_code == 403
        assert answer.json["error"] == "View change needs the operator"


class TestViews:
    @pytest.mark.parametrize("view, factor", [
        ([], 1), (["a:1"], 0), (["a:1"], 2), (["a:1", "b:2"], "2"), (["a:1"], True),
        (["nohost"], 1), ([f"h:{i + 1}" for i in range(300)], 1), (["a:1"], 17)])
    def test_bad_views_and_factors_are_refused(self, view, factor):
        with pytest.raises(ConfigError):
            reshard.check_view(view, factor)

    def test_the_seed_ring_is_a_pure_function_of_the_view(self):
        one = seed_ring(["127.0.0.1:3", "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:1"], 1)
        two = seed_ring(["127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:1"], 1)
        assert one == two and one.epoch == 1 and one.params["groups"] == 1
        assert shards(one) == [("127.0.0.1:1",), ("127.0.0.1:2",), ("127.0.0.1:3",)]
