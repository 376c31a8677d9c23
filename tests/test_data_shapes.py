"""The synthetic shapes dataset: deterministic, balanced, captions that describe the image."""
import numpy as np
import pytest

from clip.data import DatasetConfig, build_eval_source, build_train_source
from clip.data.shapes import CLASSNAMES, COLOURS, SHAPES, TEMPLATES, describe, render
from launcher.errors import UserError


def test_deterministic_from_seed_and_split():
    a = np.asarray(render(5, "train", 11)[0])
    assert np.array_equal(a, np.asarray(render(5, "train", 11)[0]))
    assert not np.array_equal(a, np.asarray(render(6, "train", 11)[0]))
    assert not np.array_equal(a, np.asarray(render(5, "val", 11)[0]))
    assert np.array_equal(np.asarray(render(5, "eval", 11)[0]), np.asarray(render(5, "val", 11)[0]))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8


def test_at_least_twenty_balanced_classes():
    assert len(CLASSNAMES) == len(set(CLASSNAMES)) == len(COLOURS) * len(SHAPES) >= 20
    source = build_eval_source(DatasetConfig(type="shapes", split="val", num_samples=96))
    labels = [source[i][1] for i in range(len(source))]
    assert np.bincount(labels).tolist() == [4] * 24
    assert source.classnames == CLASSNAMES and source.templates == TEMPLATES
    assert "red circle" in source.classnames and all("{}" in t for t in source.templates)


def test_image_shows_the_class_colour_and_captions_describe_it():
    for i in range(len(CLASSNAMES)):
        img, label, captions = render(0, "train", i)
        colour, shape = CLASSNAMES[label].split()
        pixels = np.asarray(img).reshape(-1, 3).astype(int)
        near = np.abs(pixels - np.array(COLOURS[colour])).max(axis=1) <= 20
        assert near.mean() > 0.03, (i, colour, near.mean())  # a large shape, not a speck
        assert len(set(captions)) == 5
        assert all(colour in c and shape in c for c in captions)
        assert sum(("small" in c) or ("large" in c) for c in captions) >= 2
        assert not any(" a orange" in c for c in captions)
        assert describe(0, "train", i) == (label, captions)


def test_captions_vary_in_size_and_position_words():
    captions = [render(0, "train", i)[2][2] for i in range(200)]
    assert any("small" in c for c in captions) and any("large" in c for c in captions)
    places = {c.split(" on the ")[1] for c in captions}
    assert len(places) >= 5


def test_train_and_eval_views_share_images():
    cfg = DatasetConfig(type="shapes", split="test", num_samples=30, seed=9)
    train, evaluation = build_train_source(cfg), build_eval_source(cfg)
    assert len(train) == len(evaluation) == 30
    assert np.array_equal(np.asarray(train[7][0]), np.asarray(evaluation[7][0]))
    assert train.name(7) == "shapes/test/7"


def test_custom_templates_and_bad_split():
    source = build_eval_source(DatasetConfig(type="shapes", split="val", num_samples=4, templates=["{}!"]))
    assert source.templates == ["{}!"]
    with pytest.raises(UserError, match="'dev' is not a shapes split"):
        build_train_source(DatasetConfig(type="shapes", split="dev"))
    with pytest.raises(UserError, match="data.num_samples: 0"):
        build_train_source(DatasetConfig(type="shapes", num_samples=0))
