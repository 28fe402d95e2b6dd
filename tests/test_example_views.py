"""Record-to-example views of each recipe stage, on plain records (no shards, no JAX).

    python -m pytest tests/test_example_views.py
"""

import dataclasses

import numpy as np
import pytest

from reasonclip_jax import example_views, records
from reasonclip_jax.errors import UserError


def record(**overrides) -> records.Record:
    fields = dict(
        id="r", source="test", key="k", image=b"jpeg", width=4, height=4,
        desc=("d0", "d1", "d2"), reason=("r0", "r1", "r2"), cat_caption="c",
        cat_label=3, image_labels=(0, 3, 4),
    )
    fields.update(overrides)
    return records.Record(**fields)


def test_stage1_variants_are_the_nine_pairs():
    view = example_views.make_view("stage1")
    assert view.examples_per_record == 9 and view.text_keys == ("text_desc", "text_reason")
    pairs = {tuple(view.texts(record(), v, 0, 0, 0)) for v in range(9)}
    assert pairs == {(f"d{i}", f"r{j}") for i in range(3) for j in range(3)}
    # Fewer captions are reused modulo their count.
    short = record(desc=("only",), reason=("a", "b"))
    assert [view.texts(short, v, 0, 0, 0) for v in (0, 4, 8)] == [
        ["only", "a"], ["only", "b"], ["only", "a"]
    ]


def test_stage0_rotates_through_its_pool_over_epochs():
    view = example_views.make_view("stage0", ("reason", "cat_caption"))
    for record_index in range(5):
        seen = [view.texts(record(), 0, 7, epoch, record_index)[0] for epoch in range(4)]
        assert sorted(seen) == ["c", "r0", "r1", "r2"]  # each caption once in 4 epochs
    # The start depends on the seed and the record, the same on every host.
    starts = {view.texts(record(), 0, seed, 0, 0)[0] for seed in range(20)}
    assert len(starts) > 1
    assert view.texts(record(), 0, 3, 0, 9) == view.texts(record(), 0, 3, 0, 9)


def test_stage2_labels():
    view = example_views.make_view("stage2")
    assert view.texts(record(), 0, 0, 0, 0) == ["c"]
    labels = view.labels(record())
    assert labels["cat_label"] == 3 and labels["cat_label"].dtype == np.int32
    np.testing.assert_array_equal(labels["image_labels"], [1, 0, 0, 1, 1])
    zeros = view.label_zeros()
    assert zeros.keys() == labels.keys() and not zeros["image_labels"].any()
    assert example_views.make_view("stage1").labels(record()) == {}


@pytest.mark.parametrize("view, overrides, message", [
    ("stage0", dict(desc=()), "no caption"),
    ("stage1", dict(reason=()), "needs 'desc' and 'reason'"),
    ("stage2", dict(cat_caption=None), "needs 'cat_caption'"),
    ("stage2", dict(cat_label=5), r"in \[0, 5\)"),
    ("stage2", dict(image_labels=(0, 1, 7)), r"in \[0, 5\)"),
    ("stage1", dict(image=b""), "no image"),
])
def test_check_names_what_is_missing(view, overrides, message):
    example_views.make_view(view).check(record())  # the full record passes
    with pytest.raises(ValueError, match=message):
        example_views.make_view(view).check(dataclasses.replace(record(), **overrides))


def test_bad_names_are_user_errors():
    with pytest.raises(UserError, match="unknown view 'stage3'"):
        example_views.make_view("stage3")
    with pytest.raises(UserError, match="text_fields"):
        example_views.make_view("stage0", ("captions",))
    with pytest.raises(UserError, match="text_fields"):
        example_views.make_view("stage0", ())


def test_seeded_int_is_stable():
    # A golden value: blake2b of the packed integers is the same on every host and process.
    assert example_views.seeded_int(1, 2) == 5934340693050249675
    assert example_views.seeded_int(1, 2) != example_views.seeded_int(2, 1)
    assert 0 <= example_views.seeded_int(-5, 2**40) < 2**63
