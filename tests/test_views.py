"""Record-to-example views, on plain records (no shards, no JAX).

    python -m pytest tests/test_views.py
"""

import dataclasses

import numpy as np
import pytest

from reasonclip_jax.data import records, views
from reasonclip_jax.errors import UserError


def record(**overrides) -> records.Record:
    fields = dict(
        id="r", source="test", key="k", image=b"jpeg", width=4, height=4,
        desc=("d0", "d1", "d2"), reason=("r0", "r1", "r2"), cat_caption="c",
        cat_label=3, image_labels=(0, 3, 4),
    )
    fields.update(overrides)
    return records.Record(**fields)


def test_caption_pairs_are_the_nine_pairs():
    view = views.CaptionPairsView()
    assert view.examples_per_record == 9 and view.text_keys == ("text_desc", "text_reason")
    pairs = {tuple(view.texts(record(), v, 0, 0, 0)) for v in range(9)}
    assert pairs == {(f"d{i}", f"r{j}") for i in range(3) for j in range(3)}
    # Fewer captions are reused modulo their count.
    short = record(desc=("only",), reason=("a", "b"))
    assert [view.texts(short, v, 0, 0, 0) for v in (0, 4, 8)] == [
        ["only", "a"], ["only", "b"], ["only", "a"]
    ]


def test_caption_view_rotates_through_its_pool_over_epochs():
    view = views.CaptionView(("reason", "cat_caption"))
    for record_index in range(5):
        seen = [view.texts(record(), 0, 7, epoch, record_index)[0] for epoch in range(4)]
        assert sorted(seen) == ["c", "r0", "r1", "r2"]  # each caption once in 4 epochs
    # The start depends on the seed and the record, the same on every host.
    starts = {view.texts(record(), 0, seed, 0, 0)[0] for seed in range(20)}
    assert len(starts) > 1
    # A golden value: the start of record 9's pool (r0 r1 r2 c) with seed 3, on any host.
    assert (views.seeded_int(3, 9) % 4, view.texts(record(), 0, 3, 0, 9)) == (0, ["r0"])


def test_category_caption_labels():
    view = views.CategoryCaptionView()
    assert view.texts(record(), 0, 0, 0, 0) == ["c"]
    labels = view.labels(record())
    assert labels["cat_label"] == 3 and labels["cat_label"].dtype == np.int32
    np.testing.assert_array_equal(labels["image_labels"], [1, 0, 0, 1, 1])
    zeros = view.label_zeros()
    assert zeros.keys() == labels.keys() and not zeros["image_labels"].any()
    assert views.CaptionPairsView().labels(record()) == {}
    assert views.CaptionView().label_zeros() == {}


@pytest.mark.parametrize("view, overrides, message", [
    (views.CaptionView(), dict(desc=()), "no caption"),
    (views.CaptionPairsView(), dict(reason=()), "needs 'desc' and 'reason'"),
    (views.CategoryCaptionView(), dict(cat_caption=None), "needs 'cat_caption'"),
    (views.CategoryCaptionView(), dict(cat_label=5), r"in \[0, 5\)"),
    (views.CategoryCaptionView(), dict(image_labels=(0, 1, 7)), r"in \[0, 5\)"),
    (views.CaptionPairsView(), dict(image=b""), "no image"),
])
def test_check_names_what_is_missing(view, overrides, message):
    view.check(record())  # the full record passes
    with pytest.raises(ValueError, match=message):
        view.check(dataclasses.replace(record(), **overrides))


def test_bad_text_fields_are_user_errors():
    with pytest.raises(UserError, match="text_fields"):
        views.CaptionView(("captions",))
    with pytest.raises(UserError, match="text_fields"):
        views.CaptionView(())


def test_seeded_int_is_stable():
    # A golden value: blake2b of the packed integers is the same on every host and process.
    assert views.seeded_int(1, 2) == 5934340693050249675
    assert views.seeded_int(1, 2) != views.seeded_int(2, 1)
    assert 0 <= views.seeded_int(-5, 2**40) < 2**63
