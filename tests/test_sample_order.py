"""The sweep's fairness invariant: runs at different global batches read one example stream.

Batch t of a run at B holds examples [tB, (t + 1)B) of the stream the shuffle seed fixes, so
the first k x B examples are the same sequence whatever B (with hard-negative groups too,
and summed over processes), and the sweep's runs differ in their input config only by B.
"""

import pytest
from test_pipeline import config, take
from test_pipeline import grouped_dir as grouped_dir  # noqa: F401  (fixture)
from test_pipeline import small_dir as small_dir  # noqa: F401  (fixture)

from configs.sweeps import tiny
from reasonclip_jax.data import views
from reasonclip_jax.scaling import grid


def stream(batches, text_keys=("text",)) -> list[tuple]:
    """The examples of consecutive batches, in order: (record, its texts)."""
    out = []
    for b in batches:
        for i, record in enumerate(b["record_index"]):
            out.append((int(record), *(tuple(b[k][i]) for k in text_keys)))
    return out


@pytest.mark.parametrize("batch_sizes", [(4, 8, 12), (3, 6)])
def test_the_first_examples_are_the_same_sequence_at_every_batch(small_dir, batch_sizes):  # noqa: F811
    total = 48  # two epochs of 24 records: the caption choice rotates with the epoch
    streams = [stream(take(config([small_dir], batch_size=b, shuffle_seed=3), total // b)[0])
               for b in batch_sizes]
    for other in streams[1:]:
        assert other == streams[0]
    assert sorted(r for r, _ in streams[0][:24]) == list(range(24))  # a shuffled epoch
    assert [r for r, _ in streams[0][:24]] != list(range(24))


def test_caption_pairs_stream_is_the_same_at_every_batch(small_dir):  # noqa: F811
    view, keys = views.CaptionPairsView(), ("text_desc", "text_reason")
    a = stream(take(config([small_dir], batch_size=6), 12, view=view)[0], keys)
    b = stream(take(config([small_dir], batch_size=18), 4, view=view)[0], keys)
    assert a == b and len(set(a)) == 72  # 24 records x 9 pairs, 72 distinct examples


def test_groups_and_processes_keep_the_stream(grouped_dir):  # noqa: F811
    one = stream(take(config([grouped_dir], batch_size=16, group_size=4), 3)[0])
    half = stream(take(config([grouped_dir], batch_size=8, group_size=4), 6)[0])
    assert one == half
    # Two processes: global batch t (the processes' batches t together) holds the same
    # examples as one process's batch t; the loss does not depend on their order.
    per_process = [take(config([grouped_dir], batch_size=16, group_size=4), 3,
                        process_index=p, process_count=2)[0] for p in range(2)]
    for t in range(3):
        together = stream([per_process[0][t]]) + stream([per_process[1][t]])
        assert sorted(together) == sorted(one[16 * t:16 * (t + 1)])


def test_sweep_runs_differ_in_their_input_only_by_the_batch():
    runs = grid.make_runs(tiny.get_config("/data/scenes"))
    inputs = [dict(r.config.input.to_dict(), batch_size=None) for r in runs]
    assert all(i == inputs[0] for i in inputs)
    assert len({r.config.input.batch_size for r in runs}) == 4
