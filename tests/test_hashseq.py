"""sdht.hashseq: the sequence CRDT.

Faithfulness: with BLAKE3 and hashseq's exact preimage for characters, the module reproduces the
merged strings of davidrusu/hashseq's own tests (src/hashseq.rs), which depend on the real hashes
and the real order. Properties (hypothesis, sdht's own scheme): the merge laws, the list model,
no interleaving, stable ordering, any delivery order. Hostile input: op_from_wire refuses it.
"""
from __future__ import annotations

import struct

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdht import wire
from sdht.errors import InvalidRecord
from sdht.hashseq import (BLAKE2B, DEFAULT, DOMAIN, MAX_DEPS, MAX_REMOVED, HashSeq, Op, Scheme,
                          make_op, op_from_wire)


def hashseq_char_preimage(op: Op) -> bytes:
    """hashseq's HashNode::id preimage (src/hash_node.rs) for ops whose items are characters."""
    parts = [b"extra_deps"]
    for dep in op.deps:
        parts += [b"$", dep]
    parts.append(b"op")
    if op.kind == "root":
        parts += [b"root", struct.pack("<I", ord(op.item))]
    elif op.kind in ("after", "before"):
        parts += [op.kind.encode(), op.anchor, b"$", struct.pack("<I", ord(op.item))]
    else:
        parts += [b"remove", *op.removed]
    parts.append(b"done")
    return b"".join(parts)


HASHSEQ = Scheme(lambda data: blake3.blake3(data).digest(), hashseq_char_preimage)


def text(seq: HashSeq) -> str:
    return "".join(seq.items())


def run(script, scheme: Scheme = DEFAULT) -> HashSeq:
    """A replica after hashseq's test instructions: (insert?, index, item), indexes clamped."""
    seq = HashSeq(scheme)
    for is_insert, index, item in script:
        if is_insert:
            seq.insert(min(index, len(seq)), item)
        elif len(seq):
            seq.remove(min(index, len(seq) - 1))
    return seq


def merged(*replicas: HashSeq) -> HashSeq:
    out = HashSeq(replicas[0].scheme)
    for one in replicas:
        out.merge(one)
    return out


def state(seq: HashSeq):
    return seq.tips, seq.ids(), seq.items()


def rebuilt(seq: HashSeq) -> HashSeq:
    """The same ops applied in bulk: the order walked from scratch, no incremental upkeep."""
    out = HashSeq(seq.scheme)
    out.apply_many(seq.ops())
    return out


# -- faithfulness: hashseq's own vectors -----------------------------------------------------------

@pytest.mark.parametrize("a, b, expected", [
    ("we wrote", "this together ", "this together we wrote"),                  # concurrent
    ("hello my name is david", "hello my name is zameena", "hello my name is zameenadavid"),
    ("aba", "aza", "azaba"),
    ("aaab", "aaac", "aaabc"),
])
def test_merged_strings_match_hashseq(a, b, expected):
    seq_a, seq_b = HashSeq(HASHSEQ), HashSeq(HASHSEQ)
    seq_a.insert_batch(0, a)
    seq_b.insert_batch(0, b)
    assert (text(seq_a), text(seq_b)) == (a, b)
    assert text(merged(seq_a, seq_b)) == text(merged(seq_b, seq_a)) == expected


def test_common_prefix_is_one_set_of_ops():
    seq_a, seq_b = HashSeq(HASHSEQ), HashSeq(HASHSEQ)
    seq_a.insert_batch(0, "hello my name is david")
    seq_b.insert_batch(0, "hello my name is zameena")
    shared = {op.id for op in seq_a.ops()} & {op.id for op in seq_b.ops()}
    assert len(shared) == len("hello my name is ")


@pytest.mark.parametrize("script, expected", [
    ([(1, 0, "a"), (1, 0, "b"), (1, 1, "c")], "bca"),                            # after_before
    ([(1, 0, "a"), (1, 1, "z"), (1, 1, "b"), (1, 2, "c"), (1, 3, "d")], "abcdz"),
    ([(1, 0, "a"), (1, 0, "b")], "ba"),
    ([(1, 0, "a"), (1, 0, "a")], "aa"),
    ([(1, 0, "a"), (0, 0, ""), (1, 0, "a")], "a"),                                 # reinsert
    ([(1, 0, "c"), (1, 0, "b"), (1, 1, "a")], "bac"),                            # vec model qc1..
    ([(1, 0, "a"), (1, 0, "b"), (1, 1, "c"), (1, 2, "d")], "bcda"),
    ([(1, 0, "c"), (1, 1, "c"), (1, 2, "c"), (0, 1, ""), (1, 1, "b")], "cbc"),
    ([(1, i, c) for i, c in [(0, "a"), (1, "a"), (2, "a"), (3, "a"), (3, "a"), (3, "d")]],
     "aaadaa"),
    ([(1, 0, "a"), (1, 0, "a"), (0, 0, ""), (1, 1, "b")], "ab"),
    ([(1, 0, "a"), (1, 1, "b"), (1, 0, "c"), (0, 2, "")], "ca"),
    ([(1, 0, "a"), (1, 0, "b"), (0, 1, "")], "b"),
    ([(1, 0, "a"), (1, 0, "b"), (1, 1, "c"), (0, 0, ""), (1, 2, "d")], "cad"),
    ([(1, 0, "a"), (1, 1, "a"), (1, 1, "b"), (1, 1, "a"), (0, 2, "")], "aaa"),
    ([(1, 0, "a"), (1, 0, "b"), (1, 1, "c"), (0, 2, "")], "bc"),
    ([(1, 0, "a"), (1, 0, "b"), (1, 0, "c"), (1, 0, "d"), (0, 3, "")], "dcb"),
    ([(1, 0, "a"), (1, 0, "a"), (0, 0, ""), (0, 0, ""), (1, 0, "a"), (0, 0, "")], ""),
    ([(1, 0, "a"), (1, 1, "a"), (1, 1, "a"), (1, 1, "b")], "abaa"),
    ([(1, 0, "\0"), (1, 1, "\0"), (1, 2, "\0"), (1, 3, "\x80")], "\0\0\0\x80"),
])
def test_local_edits_match_hashseq(script, expected):
    seq = run(script, HASHSEQ)
    assert text(seq) == expected
    assert seq.ids() == rebuilt(seq).ids()


def test_a_batch_is_the_same_ops_as_single_inserts():
    single, batch, split = HashSeq(HASHSEQ), HashSeq(HASHSEQ), HashSeq(HASHSEQ)
    for seq in (single, batch):
        seq.insert(0, "a")
        seq.insert(1, "z")
    for i, c in enumerate("bcd"):
        single.insert(1 + i, c)
    batch.insert_batch(1, "bcd")
    split.insert_batch(0, "ab")
    split.insert_batch(2, "cd")
    assert text(single) == text(batch) == "abcdz"
    assert set(single.ops()) == set(batch.ops()) and single.tips == batch.tips
    whole = HashSeq(HASHSEQ)
    whole.insert_batch(0, "abcd")
    assert set(whole.ops()) == set(split.ops()) and whole.tips == split.tips


def test_orphans_wait_for_their_dependencies():
    root = make_op(HASHSEQ, "root", item="b")
    seq = HashSeq(HASHSEQ)
    assert seq.apply(make_op(HASHSEQ, "after", anchor=root.id, item="a"))
    assert (seq.orphans, len(seq), seq.missing()) == (1, 0, {root.id})
    assert seq.apply(make_op(HASHSEQ, "before", anchor=root.id, item="a"))
    assert (seq.orphans, len(seq)) == (2, 0)
    assert seq.apply(root)
    assert (seq.orphans, len(seq), text(seq), seq.missing()) == (0, 3, "aba", frozenset())


def test_a_remove_that_arrives_first_takes_effect_later():
    insert = make_op(HASHSEQ, "root", item="a")
    seq = HashSeq(HASHSEQ)
    seq.apply(make_op(HASHSEQ, "remove", removed=[insert.id]))
    assert seq.orphans == 1
    seq.apply(insert)
    assert (seq.orphans, text(seq), len(seq)) == (0, "", 0)


def test_removing_twice_is_harmless():
    seq = run([(1, 0, "a"), (1, 0, "b")], HASHSEQ)
    gone = seq.ids()[1]
    seq.remove(1)
    assert seq.apply(make_op(HASHSEQ, "remove", removed=[gone]))
    assert (text(seq), len(seq)) == ("b", 1)
    assert seq.ids() == rebuilt(seq).ids()


def test_a_reinserted_item_is_a_new_op():
    seq = HashSeq(HASHSEQ)
    first = seq.insert(0, "a")
    seq.remove(0)
    again = seq.insert(0, "a")
    assert again.id != first.id and again.kind == "root" and text(seq) == "a"


# -- ids -------------------------------------------------------------------------------------------

def test_sdht_ids_are_blake2b_of_a_domain_tagged_preimage():
    op = make_op(DEFAULT, "root", item={"text": "hi"})
    assert DEFAULT.preimage(op).startswith(DOMAIN)
    assert op.id == BLAKE2B(DEFAULT.preimage(op)) and len(op.id) == 32
    ids = {make_op(DEFAULT, "root", item=item).id for item in ("a", b"a", ["a"], 1, None)}
    assert len(ids) == 5   # the item's msgpack type is part of what is hashed
    after = make_op(DEFAULT, "after", anchor=op.id, item=1)
    assert make_op(DEFAULT, "before", anchor=op.id, item=1).id != after.id
    assert make_op(DEFAULT, "after", [b"\1" * 32], op.id, 1).id != after.id


def test_the_wire_form_round_trips_through_msgpack():
    seq = HashSeq()
    for i in range(5):
        seq.insert(i // 2, {"n": i, "b": b"\0" * i})
    seq.remove(2)
    for op in seq.ops():
        assert op_from_wire(wire.unpackb(wire.packb(op.to_wire()))) == op


# -- hostile input ---------------------------------------------------------------------------------

def _wire_ops():
    seq = HashSeq()
    seq.append("x")
    seq.append("y")
    seq.insert(0, "w")
    seq.remove(1)
    return {op.kind: op.to_wire() for op in seq.ops()}


def _changed(which, **fields):
    obj = dict(_wire_ops()[which])
    for name, value in fields.items():
        if value is KeyError:
            del obj[name]
        else:
            obj[name] = value
    return obj


@pytest.mark.parametrize("obj", [
    None, [], "op", {},
    _changed("after", id=b"\0" * 32),                     # a claimed id that is not its hash
    _changed("after", item="z"),                          # content changed under the id
    _changed("after", id=b"\0" * 31),
    _changed("after", id="00" * 32),
    _changed("after", kind="insert"),
    _changed("after", kind=1),
    _changed("after", anchor=KeyError),
    _changed("after", anchor=b"\0" * 33),
    _changed("after", extra=1),
    _changed("after", item=KeyError),
    _changed("root", anchor=b"\0" * 32),
    _changed("remove", removed=[]),
    _changed("remove", removed="ab"),
    _changed("remove", removed=[b"\1" * 32] * 2),
    _changed("remove", removed=[b"\2" * 32, b"\1" * 32]),
    _changed("remove", removed=[b"\1" * 32 + bytes([i // 256, i % 256])
                                for i in range(MAX_REMOVED + 1)]),
    _changed("remove", item="x"),
    _changed("root", deps=[b"\2" * 32, b"\1" * 32]),      # unsorted
    _changed("root", deps=[b"\1" * 32, b"\1" * 32]),      # repeated
    _changed("root", deps=[b"\1" * 31]),
    _changed("root", deps=["11" * 32]),
    _changed("root", deps={b"\1" * 32: 1}),
    _changed("root", deps=[i.to_bytes(32, "big") for i in range(MAX_DEPS + 1)]),
])
def test_malformed_or_forged_ops_are_refused(obj):
    with pytest.raises(InvalidRecord):
        op_from_wire(obj)


def test_an_anchor_among_the_deps_is_refused():
    good = _wire_ops()["after"]
    obj = dict(good, deps=sorted(good["deps"] + [good["anchor"]]))
    with pytest.raises(InvalidRecord):
        op_from_wire(obj)


def test_an_op_hung_under_a_remove_is_hidden_by_every_replica():
    base = run([(1, 0, "a"), (1, 1, "b"), (0, 0, "")])
    remove = next(op for op in base.ops() if op.kind == "remove")
    hostile = make_op(DEFAULT, "after", anchor=remove.id, item="evil")
    child = make_op(DEFAULT, "before", anchor=hostile.id, item="worse")
    one, other = HashSeq(), HashSeq()
    for op in [*base.ops(), hostile, child]:
        one.apply(op)
    for op in [child, hostile, *reversed(base.ops())]:
        other.apply(op)
    assert state(one) == state(other) == state(rebuilt(one))
    assert one.items() == ["b"] and len(one) == 1
    with pytest.raises(KeyError):
        one.remove_ids([hostile.id])


def test_a_writer_facing_more_tips_than_max_deps_still_writes_valid_ops():
    seq = HashSeq()
    root = seq.append("r")
    forks = [make_op(DEFAULT, "after", anchor=root.id, item=i) for i in range(MAX_DEPS + 10)]
    seq.apply_many(forks)
    op = seq.append("last")
    assert len(op.deps) == MAX_DEPS and op_from_wire(op.to_wire()) == op
    assert len(seq.tips) == 10 and seq.items()[-1] == "last"


# -- properties ------------------------------------------------------------------------------------

scripts = st.lists(st.tuples(st.booleans(), st.integers(0, 12), st.sampled_from("abc")),
                   max_size=14)


@settings(max_examples=150, deadline=None)
@given(scripts)
def test_local_edits_behave_as_a_list(script):
    seq, model = HashSeq(), []
    for is_insert, index, item in script:
        if is_insert:
            op = seq.insert(index, item)
            model.insert(index, item)
            assert op.id in seq.ids()
        elif model:
            index = index % len(model)
            seq.remove(index)
            del model[index]
        assert seq.items() == model and len(seq) == len(model)
    assert seq.ids() == rebuilt(seq).ids()


@settings(max_examples=100, deadline=None)
@given(scripts, scripts)
def test_merge_commutes(a, b):
    seq_a, seq_b = run(a), run(b)
    assert state(merged(seq_a, seq_b)) == state(merged(seq_b, seq_a))


@settings(max_examples=80, deadline=None)
@given(scripts, scripts, scripts)
def test_merge_associates(a, b, c):
    seq_a, seq_b, seq_c = run(a), run(b), run(c)
    left = merged(merged(seq_a, seq_b), seq_c)
    right = merged(seq_a, merged(seq_b, seq_c))
    assert state(left) == state(right) == state(rebuilt(left))


@settings(max_examples=80, deadline=None)
@given(scripts)
def test_merge_is_idempotent(a):
    seq = run(a)
    before = state(seq)
    seq.merge(seq)
    seq.merge(run(a))      # the same edits made again give the same ops
    assert state(seq) == before


@settings(max_examples=80, deadline=None)
@given(scripts, scripts, st.randoms(use_true_random=False))
def test_any_delivery_order_gives_the_same_sequence(a, b, rnd):
    union = merged(run(a), run(b))
    ops = union.ops()
    rnd.shuffle(ops)
    seq = HashSeq()
    for op in ops:
        seq.apply(op)
        assert seq.ids() == rebuilt(seq).ids()   # the order kept up to date matches a walk
    assert seq.orphans == 0 and state(seq) == state(union)


@settings(max_examples=80, deadline=None)
@given(scripts, scripts)
def test_each_replica_order_is_kept_in_the_merge(a, b):
    seq_a, seq_b = run(a), run(b)
    both = merged(seq_a, seq_b)
    shown = set(both.ids())
    for one in (seq_a, seq_b):
        mine = set(one.ids())
        assert [i for i in one.ids() if i in shown] == [i for i in both.ids() if i in mine]


@settings(max_examples=80, deadline=None)
@given(scripts, st.integers(0, 14), st.integers(0, 14), st.integers(1, 5), st.integers(1, 5))
def test_concurrent_runs_never_interleave(base, at_a, at_b, len_a, len_b):
    common = run(base)
    seq_a, seq_b = merged(common), merged(common)
    runs = []
    for seq, at, length, who in ((seq_a, at_a, len_a, "A"), (seq_b, at_b, len_b, "B")):
        at = min(at, len(seq))
        runs.append([seq.insert(at + i, f"{who}{i}").id for i in range(length)])
    order = merged(seq_a, seq_b).ids()
    for ids in runs:
        start = order.index(ids[0])
        assert order[start:start + len(ids)] == ids


def test_orphans_are_looked_at_when_their_dependency_arrives_not_on_every_apply():
    class Counting(HashSeq):
        looks = 0

        def _first_missing(self, op):
            Counting.looks += 1
            return super()._first_missing(op)

    chain = HashSeq()
    for i in range(300):
        chain.append(i)
    seq = Counting()
    for op in reversed(chain.ops()):   # every op but the root waits, each for its anchor
        seq.apply(op)
    assert seq.orphans == 0 and seq.items() == list(range(300))
    assert Counting.looks <= 2 * 300


def test_ten_thousand_items_need_no_recursion():
    seq = HashSeq()
    for i in range(10_000):
        seq.append(i)
    seq.insert(5_000, "mid")
    seq.remove(0)
    copy = rebuilt(seq)
    assert copy.items() == seq.items() and len(copy) == 10_000
    assert copy.items()[4_999] == "mid"


def test_a_typo_fix_anchors_before_the_right_neighbour():
    seq = HashSeq(HASHSEQ)
    seq.insert_batch(0, "hllo")
    fix = seq.insert(1, "e")
    assert (fix.kind, fix.anchor) == ("before", seq.ids()[2])
    other = merged(seq)
    other.append("!")
    assert text(merged(seq, other)) == "hello!"


@st.composite
def op_sets(draw):
    """Ops a byzantine writer might make: any kind, any anchor or target, any deps."""
    ops: list[Op] = []
    inserts: list[bytes] = []
    for n in range(draw(st.integers(1, 25))):
        known = [op.id for op in ops]
        kinds = ["root", "after", "before", "remove"] if inserts else ["root"]
        kind = draw(st.sampled_from(kinds))
        anchor = draw(st.sampled_from(known)) if kind in ("after", "before") else None
        deps = set(draw(st.lists(st.sampled_from(known), max_size=3))) if known else set()
        removed = set(draw(st.lists(st.sampled_from(inserts), min_size=1, max_size=3))) \
            if kind == "remove" else set()
        op = make_op(DEFAULT, kind, deps - {anchor} - removed, anchor,
                     None if kind == "remove" else n, removed)
        ops.append(op)
        if kind != "remove":
            inserts.append(op.id)
    return ops


@settings(max_examples=60, deadline=None)
@given(op_sets(), st.randoms(use_true_random=False))
def test_any_op_set_in_any_order_gives_one_order(ops, rnd):
    reference = HashSeq()
    reference.apply_many(ops)
    shuffled = list(ops)
    rnd.shuffle(shuffled)
    seq = HashSeq()
    for op in shuffled:
        seq.apply(op)
        assert seq.ids() == rebuilt(seq).ids() and len(seq) == len(seq.ids())
    assert state(seq) == state(reference) and seq.orphans == 0
    for op in shuffled:
        assert not seq.apply(op)


@settings(max_examples=100, deadline=None)
@given(scripts, scripts, scripts)
def test_positions_after_a_merge_are_the_merged_order(a, b, edits):
    # hashseq's incremental index can disagree with its iterator after merges (seeds-deep
    # §1.11.1); here positions are read from the walk itself, so local edits on a merged
    # replica still behave as a list.
    seq = merged(run(a), run(b))
    model = seq.items()
    for is_insert, index, item in edits:
        if is_insert:
            seq.insert(index, item)
            model.insert(index, item)
        elif model:
            index = index % len(model)
            seq.remove(index)
            del model[index]
        assert seq.items() == model and seq.ids() == rebuilt(seq).ids()
