"""The real mindspore.dataset pipeline, run for 1, 2 and 4 ranks in one process via shard_id."""
import logging

import numpy as np
import pytest
from PIL import Image

import clip
from clip.data import DatasetConfig, build_train_source
from clip.data.pipeline import caption_index, epoch_order, global_batch, shard_layout, steps_per_epoch, train_batches
from launcher.errors import UserError

SIZE, CTX, SEED = 32, 24, 7
GLOBAL = 8  # global batch; W x B = 1x8, 2x4, 4x2


def rank_indices(num_samples: int, *, batch_size: int, rank: int, world_size: int, epoch: int, seed: int,
                 start_step: int = 0) -> np.ndarray:
    """Sample indices this rank loads from `start_step` to the end of the epoch, shape [steps, B]."""
    steps = steps_per_epoch(num_samples, batch_size, world_size)
    g = batch_size * world_size
    blocks = epoch_order(num_samples, seed, epoch)[start_step * g:steps * g]
    return blocks.reshape(-1, world_size, batch_size)[:, rank, :]


def run(source, world_size, epoch=0, start_step=0, num_workers=1):
    """Every rank's batches: {rank: (list of (images, tokens)), TrainBatches}."""
    out = {}
    for rank in range(world_size):
        batches = train_batches(source, image_size=SIZE, context_length=CTX, batch_size=GLOBAL // world_size,
                                rank=rank, world_size=world_size, epoch=epoch, seed=SEED,
                                start_step=start_step, num_workers=num_workers)
        out[rank] = (list(batches), batches)
    return out


def global_rows(per_rank, step):
    """Rank-ordered concatenation of every rank's batch at `step`, as the gathered global batch."""
    ranks = sorted(per_rank)
    images = np.concatenate([per_rank[r][0][step][0] for r in ranks])
    tokens = np.concatenate([per_rank[r][0][step][1] for r in ranks])
    return images, tokens


@pytest.fixture(scope="module")
def shapes():
    return build_train_source(DatasetConfig(type="shapes", num_samples=36, seed=3))


@pytest.fixture(scope="module")
def shapes_runs(shapes):
    return {w: run(shapes, w) for w in (1, 2, 4)}


def test_index_plan_disjoint_and_world_size_independent():
    n = 53
    for w, b in ((1, 8), (2, 4), (4, 2), (8, 1)):
        assert steps_per_epoch(n, b, w) == 6
        per_rank = [rank_indices(n, batch_size=b, rank=r, world_size=w, epoch=2, seed=SEED) for r in range(w)]
        seen = np.concatenate([p.ravel() for p in per_rank])
        assert len(seen) == len(set(seen.tolist())) == 48
        for t in range(6):
            expected = global_batch(n, batch_size=b, world_size=w, epoch=2, seed=SEED, step=t)
            assert np.array_equal(np.concatenate([p[t] for p in per_rank]), expected)
            assert np.array_equal(expected, epoch_order(n, SEED, 2)[t * 8:(t + 1) * 8])
        layout = shard_layout(n, batch_size=b, world_size=w, epoch=2, seed=SEED, start_step=1)
        for r in range(w):  # GeneratorDataset's interleaved shard r of the layout is rank r's block sequence
            assert np.array_equal(layout[r::w], per_rank[r][1:].ravel())
    assert not np.array_equal(epoch_order(n, SEED, 0), epoch_order(n, SEED, 1))


def test_caption_choice_varies_by_epoch_and_sample_but_is_reproducible():
    picks = np.array([[caption_index(SEED, i, e, 5) for e in range(6)] for i in range(200)])
    assert set(picks.ravel().tolist()) == {0, 1, 2, 3, 4}
    assert (picks.min(axis=1) != picks.max(axis=1)).mean() > 0.9  # almost every sample changes caption
    assert len({tuple(col) for col in picks.T}) == 6  # epochs differ from each other
    assert picks[17, 3] == caption_index(SEED, 17, 3, 5)


def test_batches_have_contract_shapes_and_dtypes(shapes_runs):
    batches, handle = shapes_runs[2][1]
    assert len(batches) == len(handle) == steps_per_epoch(36, 4, 2) == 4
    images, tokens = batches[0]
    assert images.shape == (4, 3, SIZE, SIZE) and images.dtype == np.float32
    assert tokens.shape == (4, CTX) and tokens.dtype == np.int32
    assert handle.unreadable == 0


def test_same_global_batches_whatever_the_world_size(shapes_runs):
    ref = shapes_runs[1]
    for w in (2, 4):
        for t in range(4):
            ref_images, ref_tokens = global_rows(ref, t)
            images, tokens = global_rows(shapes_runs[w], t)
            np.testing.assert_array_equal(images, ref_images)
            np.testing.assert_array_equal(tokens, ref_tokens)


def test_ranks_get_disjoint_shards_that_match_the_plan(shapes, shapes_runs):
    transform = clip.image_transform(SIZE)
    per_rank = shapes_runs[4]
    fingerprints = set()
    for r in range(4):
        plan = rank_indices(36, batch_size=2, rank=r, world_size=4, epoch=0, seed=SEED)
        for t, (images, _) in enumerate(per_rank[r][0]):
            for row, index in zip(images, plan[t]):
                np.testing.assert_allclose(row, transform(shapes.image(int(index))), atol=1e-6)
                fingerprints.add(row.tobytes())
    assert len(fingerprints) == 4 * 4 * 2  # 32 distinct samples across ranks and steps, none repeated


def test_captions_are_redrawn_each_epoch(shapes, shapes_runs):
    rows = {}  # sample -> {epoch: token row}
    for epoch, per_rank in ((0, shapes_runs[1]), (1, run(shapes, 1, epoch=1))):
        for t in range(4):
            order = global_batch(36, batch_size=8, world_size=1, epoch=epoch, seed=SEED, step=t).tolist()
            for i, row in zip(order, global_rows(per_rank, t)[1]):
                caps = shapes.captions(i)
                expected = clip.tokenize([caps[caption_index(SEED, i, epoch, len(caps))]], context_length=CTX)[0]
                np.testing.assert_array_equal(row, expected)
                rows.setdefault(i, {})[epoch] = row
    both = [r for r in rows.values() if len(r) == 2]
    changed = sum(not np.array_equal(r[0], r[1]) for r in both)
    assert len(both) >= 20 and changed >= len(both) // 2, (len(both), changed)


def test_resume_from_start_step_continues_exactly(shapes, shapes_runs):
    resumed = run(shapes, 2, start_step=3)
    for r in range(2):
        batches, handle = resumed[r]
        assert len(handle) == len(batches) == 1
        full = shapes_runs[2][r][0]
        np.testing.assert_array_equal(batches[0][0], full[3][0])
        np.testing.assert_array_equal(batches[0][1], full[3][1])
    assert list(run(shapes, 2, start_step=4)[0][0]) == []


@pytest.mark.processes
def test_worker_processes_give_identical_batches(shapes, shapes_runs):
    parallel = run(shapes, 2, num_workers=2)
    for r in range(2):
        for (a_img, a_tok), (b_img, b_tok) in zip(parallel[r][0], shapes_runs[2][r][0]):
            np.testing.assert_array_equal(a_img, b_img)
            np.testing.assert_array_equal(a_tok, b_tok)


def test_dataset_smaller_than_a_global_batch_is_a_user_error():
    tiny = build_train_source(DatasetConfig(type="shapes", num_samples=5))
    with pytest.raises(UserError, match="5 samples are fewer than one global batch"):
        train_batches(tiny, image_size=SIZE, context_length=CTX, batch_size=4, rank=0, world_size=2, epoch=0,
                      seed=0)


@pytest.fixture(scope="module")
def corrupt_table(tmp_path_factory):
    """16 real PNG/JPEG images listed in a CSV; #5 is garbage bytes and #11 a truncated JPEG."""
    root = tmp_path_factory.mktemp("corrupt")
    rng = np.random.default_rng(0)
    rows = ["filepath,title"]
    for i in range(16):
        ext = "png" if i % 2 else "jpg"
        path = root / "img" / f"{i:02d}.{ext}"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)).save(path)
        rows.append(f"img/{i:02d}.{ext},picture number {i}")
    (root / "img" / "05.png").write_bytes(b"this is not an image at all")
    data = (root / "img" / "10.jpg").read_bytes()
    (root / "img" / "10.jpg").write_bytes(data[: len(data) // 2])
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return str(root / "train.csv")


@pytest.mark.processes
def test_corrupt_images_are_counted_logged_and_replaced(corrupt_table, caplog):
    source = build_train_source(DatasetConfig(type="csv", path=corrupt_table))
    with caplog.at_level(logging.WARNING, logger="clip.data.pipeline"):
        one = run(source, 1)
        two = run(source, 2, num_workers=2)
    assert "05.png" in caplog.text and "10.jpg" in caplog.text
    assert one[0][1].unreadable == 2 and sorted(one[0][1].unreadable_names) == ["img/05.png", "img/10.jpg"]
    assert sum(two[r][1].unreadable for r in range(2)) == 2  # counted in worker processes too
    assert sorted(two[0][1].unreadable_names + two[1][1].unreadable_names) == ["img/05.png", "img/10.jpg"]
    transform = clip.image_transform(SIZE)
    for t in range(2):
        images, tokens = global_rows(one, t)
        np.testing.assert_array_equal(images, global_rows(two, t)[0])
        np.testing.assert_array_equal(tokens, global_rows(two, t)[1])
        order = global_batch(16, batch_size=8, world_size=1, epoch=0, seed=SEED, step=t).tolist()
        for row, tok, i in zip(images, tokens, order):
            used = i + 1 if i in (5, 10) else i  # the next sample, image and caption together
            np.testing.assert_allclose(row, transform(source.image(used)), atol=1e-6)
            np.testing.assert_array_equal(tok, clip.tokenize([f"picture number {used}"], context_length=CTX)[0])


def test_no_readable_image_is_a_user_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"junk")
    (tmp_path / "t.csv").write_text("filepath,title\na.jpg,a cat\nmissing.png,a dog\n")
    source = build_train_source(DatasetConfig(type="csv", path=str(tmp_path / "t.csv")))
    batches = train_batches(source, image_size=SIZE, context_length=CTX, batch_size=1, rank=0, world_size=1,
                            epoch=0, seed=0)
    with pytest.raises(UserError, match="no readable image among 2 consecutive samples from '(a.jpg|missing.png)'"):
        list(batches)
