"""clip.buckets: how gradients are grouped (pure); tests/test_distributed.py checks the all-reduce itself."""
import pytest

from clip.native.buckets import layout, merge_around, plan_buckets, rows_are_fewer


def test_buckets_follow_backward_order_and_respect_the_cap():
    # 4-byte floats, 40-byte buckets: 10 elements each.
    assert plan_buckets([4, 4, 4, 4], 40) == [(2, 4), (0, 2)]
    assert plan_buckets([3, 3, 3], 40) == [(0, 3)]


def test_a_tensor_larger_than_a_bucket_gets_its_own():
    assert plan_buckets([2, 100, 2, 2], 40) == [(2, 4), (1, 2), (0, 1)]


def test_every_parameter_in_exactly_one_bucket():
    sizes = [1, 7, 300, 5, 5, 5, 1000, 1, 64]
    buckets = plan_buckets(sizes, 256)
    assert sorted(i for lo, hi in buckets for i in range(lo, hi)) == list(range(len(sizes)))
    assert all(sum(sizes[lo:hi]) * 4 <= 256 or hi - lo == 1 for lo, hi in buckets)


def test_bucket_size_must_be_positive():
    with pytest.raises(ValueError):
        plan_buckets([1], 0)


def test_the_embedding_gets_a_bucket_of_its_own_wherever_it_sits():
    assert plan_buckets([3, 3, 3, 3], 100, alone=0) == [(1, 4), (0, 1)]
    assert plan_buckets([3, 3, 3, 3], 100, alone=1) == [(2, 4), (1, 2), (0, 1)]
    assert plan_buckets([3, 3, 3, 3], 100, alone=3) == [(3, 4), (0, 3)]
    assert plan_buckets([3, 3, 3, 3], 100) == [(0, 4)]


def test_rows_travel_only_when_the_tokens_index_fewer_rows_than_the_table():
    assert rows_are_fewer(2, (16, 32), 49408)             # clip_tiny, 2 ranks x 16: 1024 ids
    assert rows_are_fewer(8, (32, 77), 49408)             # ViT-B/32, 8 cards x 32: 19712 ids
    assert not rows_are_fewer(8, (256, 77), 49408)        # 8 cards x 256: 157696 ids, the table is less
    assert not rows_are_fewer(2, (10, 10), 200)


def test_the_rows_travel_with_the_buckets_either_side_of_the_table():
    # clip_tiny: the token embedding is parameter 59 of 62
    assert merge_around([(60, 62), (59, 60), (0, 59)], 59) == ([((60, 62), (0, 59))], 0)
    ranges = [(8, 10), (6, 8), (5, 6), (3, 5), (0, 3)]
    assert merge_around(ranges, 5) == ([((8, 10),), ((6, 8), (3, 5)), ((0, 3),)], 1)
    assert merge_around([(1, 3), (0, 1)], 0) == ([((1, 3),)], 0)   # first parameter: one neighbour
    assert merge_around([(2, 3), (0, 2)], 2) == ([((0, 2),)], 0)   # last parameter
    assert merge_around([(0, 1)], 0) == ([()], 0)                  # alone in the model: the rows only


def test_layout_places_each_parameter_in_its_group_buffer():
    sizes = [3, 4, 100, 5, 6]
    groups, merged = merge_around([(3, 5), (2, 3), (0, 2)], 2)
    group_of, starts = layout(groups, sizes)
    assert group_of == [0, 0, -1, 0, 0] and merged == 0
    assert starts == [11, 14, 0, 0, 5]   # the group's buffer is [p3, p4, p0, p1], then the rows
