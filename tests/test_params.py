"""The cluster parameter table (sdht/params.py): one home for every parameter and limit."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from sdht import params
from sdht.errors import ConfigError, InvalidRecord
from sdht.ring import RingView
from storage.config import load_config


def test_every_parameter_has_a_default_in_its_range_and_a_meaning():
    for p in params.TABLE.values():
        assert p.low <= p.default <= p.high, p.name
        assert p.doc and type(p.default) in (int, float)
    assert params.check(params.DEFAULTS) == params.DEFAULTS


@pytest.mark.parametrize("name", sorted(params.TABLE))
def test_out_of_range_and_wrong_types_are_refused_naming_the_parameter(name):
    p = params.TABLE[name]
    for bad in (p.high * 2 + 1, p.low - 1, "3", None, True, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match=name):
            params.check({**params.DEFAULTS, name: bad})


def test_unknown_parameters_and_quorums_above_n_are_refused():
    with pytest.raises(ConfigError, match="unknown"):
        params.with_defaults({"mni_work": 3})
    with pytest.raises(ConfigError, match="exceed n"):
        params.with_defaults({"n": 2, "r": 3})


@given(st.sampled_from(sorted(params.TABLE)), st.floats(allow_nan=False))
def test_node_client_and_ring_agree_on_what_is_valid(name, value):
    """The node's settings, a client's new ring and a ring from the wire all check through the
    table, so they accept and refuse exactly the same values."""
    value = int(value) if params.TABLE[name].type is int and abs(value) < 2**62 else value
    verdicts = []
    for attempt in (lambda: params.with_defaults({name: value}),
                    lambda: load_config({"DATA_DIR": "/nonexistent", "PARAMS": {name: value}}),
                    lambda: RingView.from_json({"epoch": 1, "members": [],
                                                "params": {name: value}})):
        try:
            attempt()
            verdicts.append(True)
        except ConfigError:
            verdicts.append(False)
    assert len(set(verdicts)) == 1, verdicts


def test_environment_values_parse_by_the_parameter_type():
    cfg = load_config({"DATA_DIR": "/nonexistent"}, environ={"SDHT_MIN_WORK": "4.5",
                                                           "SDHT_N": "5"})
    assert cfg["PARAMS"] == {"min_work": 4.5, "n": 5}
    with pytest.raises(ConfigError, match="SDHT_N"):
        load_config({"DATA_DIR": "/x"}, environ={"SDHT_N": "three"})


def test_work_asked_for_is_between_min_work_and_max_work():
    p = params.with_defaults({"min_work": 3.0, "max_work": 10.0})
    assert params.check_work(10, p) == 10.0
    for bad in (2.9, 10.1, 1000):
        with pytest.raises(InvalidRecord):
            params.check_work(bad, p)
    with pytest.raises(ConfigError, match="max_work"):
        params.with_defaults({"min_work": 5.0, "max_work": 4.0})
