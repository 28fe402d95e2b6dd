"""Hits at k in a ranked gallery, exact ties ordered as CPU `torch.topk` orders them.

The release scores retrieval (`eval/eval_RCLIP_retrieval.py`) and zero-shot classification
(`eval/eval_zeroshot_imagenet.py`) by taking `torch.topk(scores, K)` once, K the largest k,
and counting a hit at k when a correct item is among the first k indices. Exactly equal
scores are common there (a caption string repeated across images is one embedding, so its
gallery entries always tie; ImageNet names two classes "missile" and two "sunglasses"), and
which of them topk returns first is decided by the algorithm torch runs, not by index.

The tie rule, `ties="topk"`: the order of CPU `torch.topk(row, K)` (largest, sorted). torch
pairs each score with its index and runs libstdc++'s `std::partial_sort` over the pairs,
comparing scores only, when 64 * K <= len(row), else `std::nth_element` at K - 1 followed by
`std::sort` of the first K - 1 (ATen/native/TopKImpl.h); NaN counts as the largest score.
Neither algorithm is stable, so tied scores come out in an order that is neither lowest
index first nor highest (topk of five equal scores with K = 1 returns index 2).
`topk_indices` transcribes those algorithms from GCC's bits/stl_algo.h and stl_heap.h, which
makes the order reproducible without torch; tests/test_retrieval.py checks it against
torch.topk on planted ties. (The release on a GPU runs CUDA's topk, whose tie order differs.)

`ties="rank"`: `eval/eval_retrieval.py`'s rule for COCO/Flickr, rank = 1 + the number of
items scoring strictly higher than the best correct one; a hit at k if rank <= k (ties go
for the model).

Only queries whose outcome turns on a tie (the best correct item ties with wrong ones across
a boundary k) run the transcription; every other query is settled by counting, vectorised.

    python -c "from reasonclip_jax.evaluators import ranking; \
print(ranking.topk_indices([0.0] * 5, 1))"
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from reasonclip_jax.errors import UserError

TIES = ("topk", "rank")
_SORT_THRESHOLD = 16  # libstdc++'s _S_threshold: std::sort finishes with insertion sort
_SCAN_BLOCK = 1024  # scores filtered at a time in partial_sort's scan

Pair = tuple[float, int]  # (score, index), as torch's queue holds them


def _before(x: Pair, y: Pair) -> bool:
    """torch's comparator for largest=True: x goes first if it is NaN and y is not, or if
    x's score is greater (scores only: equal scores are unordered)."""
    a, b = x[0], y[0]
    return a > b or (a != a and b == b)  # a != a: a is NaN


def _lg(n: int) -> int:
    return n.bit_length() - 1  # std::__lg: floor(log2(n))


def _adjust_heap(q: list[Pair], first: int, hole: int, length: int, value: Pair) -> None:
    top = child = hole
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if _before(q[first + child], q[first + child - 1]):
            child -= 1
        q[first + hole] = q[first + child]
        hole = child
    if length % 2 == 0 and child == (length - 2) // 2:
        child = 2 * (child + 1)
        q[first + hole] = q[first + child - 1]
        hole = child - 1
    parent = (hole - 1) // 2  # std::__push_heap
    while hole > top and _before(q[first + parent], value):
        q[first + hole] = q[first + parent]
        hole = parent
        parent = (hole - 1) // 2
    q[first + hole] = value


def _make_heap(q: list[Pair], first: int, last: int) -> None:
    length = last - first
    if length < 2:
        return
    parent = (length - 2) // 2
    while True:
        _adjust_heap(q, first, parent, length, q[first + parent])
        if parent == 0:
            return
        parent -= 1


def _pop_heap(q: list[Pair], first: int, last: int, result: int) -> None:
    value = q[result]
    q[result] = q[first]
    _adjust_heap(q, first, 0, last - first, value)


def _heap_select(q: list[Pair], first: int, middle: int, last: int) -> None:
    _make_heap(q, first, middle)
    for i in range(middle, last):
        if _before(q[i], q[first]):
            _pop_heap(q, first, middle, i)


def _sort_heap(q: list[Pair], first: int, last: int) -> None:
    while last - first > 1:
        last -= 1
        _pop_heap(q, first, last, last)


def _partial_sort(q: list[Pair], first: int, middle: int, last: int) -> None:
    _heap_select(q, first, middle, last)
    _sort_heap(q, first, middle)


def _partial_sort_top(values: np.ndarray, k: int) -> list[Pair]:
    """`std::partial_sort` of all (score, index) pairs over the first k positions, the scan
    vectorised: its loop moves an element only when it goes before the heap's top, the top
    never goes down, and a position behind the scan is never read again, so the blocks are
    filtered against the top in numpy and only their survivors are checked one by one."""
    heap = [(float(s), j) for j, s in enumerate(values[:k].tolist())]
    _make_heap(heap, 0, k)
    for start in range(k, len(values), _SCAN_BLOCK):
        top = heap[0][0]
        if top != top:
            break  # a NaN on top: nothing goes before it any more
        block = values[start : start + _SCAN_BLOCK]
        for offset in np.flatnonzero((block > top) | np.isnan(block)).tolist():
            pair = (float(block[offset]), start + offset)
            if _before(pair, heap[0]):
                _adjust_heap(heap, 0, 0, k, pair)  # std::__pop_heap(first, middle, i)
    _sort_heap(heap, 0, k)
    return heap


def _unguarded_linear_insert(q: list[Pair], last: int) -> None:
    value, prev = q[last], last - 1
    while _before(value, q[prev]):
        q[last] = q[prev]
        last, prev = prev, prev - 1
    q[last] = value


def _insertion_sort(q: list[Pair], first: int, last: int) -> None:
    for i in range(first + 1, last):
        if _before(q[i], q[first]):
            value = q[i]
            q[first + 1 : i + 1] = q[first:i]  # std::move_backward
            q[first] = value
        else:
            _unguarded_linear_insert(q, i)


def _unguarded_partition_pivot(q: list[Pair], first: int, last: int) -> int:
    a, b, c = first + 1, first + (last - first) // 2, last - 1
    # std::__move_median_to_first: the median of a, b, c swapped into `first`.
    if _before(q[a], q[b]):
        median = b if _before(q[b], q[c]) else c if _before(q[a], q[c]) else a
    else:
        median = a if _before(q[a], q[c]) else c if _before(q[b], q[c]) else b
    q[first], q[median] = q[median], q[first]
    pivot, lo, hi = q[first], first + 1, last  # std::__unguarded_partition
    while True:
        while _before(q[lo], pivot):
            lo += 1
        hi -= 1
        while _before(pivot, q[hi]):
            hi -= 1
        if not lo < hi:
            return lo
        q[lo], q[hi] = q[hi], q[lo]
        lo += 1


def _nth_element(q: list[Pair], first: int, nth: int, last: int) -> None:
    if first == last or nth == last:
        return
    depth = 2 * _lg(last - first)  # std::__introselect
    while last - first > 3:
        if depth == 0:
            _heap_select(q, first, nth + 1, last)
            q[first], q[nth] = q[nth], q[first]
            return
        depth -= 1
        cut = _unguarded_partition_pivot(q, first, last)
        if cut <= nth:
            first = cut
        else:
            last = cut
    _insertion_sort(q, first, last)


def _introsort_loop(q: list[Pair], first: int, last: int, depth: int) -> None:
    while last - first > _SORT_THRESHOLD:
        if depth == 0:
            _partial_sort(q, first, last, last)
            return
        depth -= 1
        cut = _unguarded_partition_pivot(q, first, last)
        _introsort_loop(q, cut, last, depth)
        last = cut


def _sort(q: list[Pair], first: int, last: int) -> None:
    if first == last:
        return
    _introsort_loop(q, first, last, 2 * _lg(last - first))
    if last - first > _SORT_THRESHOLD:  # std::__final_insertion_sort
        _insertion_sort(q, first, first + _SORT_THRESHOLD)
        for i in range(first + _SORT_THRESHOLD, last):
            _unguarded_linear_insert(q, i)
    else:
        _insertion_sort(q, first, last)


def topk_indices(scores: Sequence[float] | np.ndarray, k: int) -> list[int]:
    """The indices CPU `torch.topk(torch.tensor(scores), k).indices` returns, in its order,
    ties included (1 <= k <= len(scores))."""
    values = np.asarray(scores, np.float64).reshape(-1)  # torch compares floats as doubles
    if not 1 <= k <= len(values):
        raise ValueError(f"topk_indices: k={k} outside [1, {len(values)}]")
    if k * 64 <= len(values):
        q = _partial_sort_top(values, k)
    else:
        q = [(float(s), j) for j, s in enumerate(values.tolist())]
        _nth_element(q, 0, k - 1, len(q))
        _sort(q, 0, k - 1)
    return [j for _, j in q[:k]]


def distinct_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct rows of x, index [len(x)] of each row's copy among them). Score a query
    against the distinct rows and expand with the index: equal gallery embeddings then get
    bitwise-equal scores (exact ties) whatever the matmul kernel does with their columns."""
    distinct, index = np.unique(x, axis=0, return_inverse=True)
    return distinct, index.reshape(-1)


def check_ties(ties: str) -> None:
    """A `UserError` unless `ties` is one of TIES."""
    if ties not in TIES:
        raise UserError(f"unknown ties '{ties}'; choose one of {list(TIES)}")


def hits_at(
    scores: np.ndarray, positive: np.ndarray, ks: Sequence[int], ties: str = "topk"
) -> np.ndarray:
    """bool [len(ks), Q]: whether query q has a correct item (`positive[q]`, bool [Q, N]) among
    its top k of `scores[q]` (float [Q, N]), exact ties ordered by `ties` (see the module
    docstring). Every query needs at least one correct item."""
    check_ties(ties)
    ks_array = np.asarray(ks)[:, None]
    best = np.where(positive, scores, -np.inf).max(axis=1)
    above = np.sum(scores > best[:, None], axis=1)  # only wrong items can beat the best
    if ties == "rank":
        return above[None, :] < ks_array
    tied = np.sum(~positive & (scores == best[:, None]), axis=1)  # wrong items level with it
    hits = above[None, :] + tied[None, :] < ks_array  # first even if every tie goes against
    # A query is open when the boundary k cuts through its tie (or a score is NaN, which
    # the counts above do not order as torch does): the transcription settles those.
    open_queries = ((above[None, :] < ks_array) & ~hits).any(axis=0)
    open_queries |= np.isnan(scores).any(axis=1)
    top = min(max(ks), scores.shape[1])
    for q in np.flatnonzero(open_queries):
        found = np.cumsum(positive[q][topk_indices(scores[q], top)]) > 0
        hits[:, q] = [found[min(k, top) - 1] for k in ks]
    return hits
