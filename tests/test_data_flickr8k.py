"""Flickr8k in both layouts, built as small real datasets in temporary directories."""
import logging
import os

import numpy as np
import pytest
from PIL import Image

from clip.data import DatasetConfig, build_train_source
from clip.data.flickr8k import open_split, parse_tokens
from launcher.errors import UserError

NAMES = [f"{1000 + i}_abc{i}.jpg" for i in range(10)]
DANGLING = "2258277193_586949ec62.jpg.1"
SPLITS = {"train": NAMES[:6], "dev": NAMES[6:8], "test": NAMES[8:]}


def make_flickr(root, image_dir, text_dir):
    """Real JPEGs, a token file with five shuffled captions each plus the dangling line, three split files."""
    images = root / image_dir
    text = root / text_dir
    images.mkdir(parents=True)
    text.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(NAMES):
        Image.new("RGB", (16 + i, 12), (20 * i, 100, 200)).save(images / name, quality=90)
    lines = [f"{name}#{k}\t{name} caption {k} ." for k in (3, 0, 4, 1, 2) for name in NAMES]
    lines.insert(7, f"{DANGLING}#0\tA dog runs on grass .")
    (text / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    for split, names in SPLITS.items():
        (text / f"Flickr_8k.{split}Images.txt").write_text("\n".join(names) + "\n")
    return str(root)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    return make_flickr(tmp_path_factory.mktemp("official"), "Flicker8k_Dataset", ".")


@pytest.fixture(scope="module")
def mindformers(tmp_path_factory):
    return make_flickr(tmp_path_factory.mktemp("seed"), os.path.join("Flickr8k_Dataset", "Flickr8k_Dataset"),
                       "Flickr8k_text")


@pytest.mark.parametrize("layout", ["official", "mindformers"])
def test_both_layouts_load_split_with_five_ordered_captions(layout, request, caplog):
    root = request.getfixturevalue(layout)
    with caplog.at_level(logging.WARNING, logger="clip.data.flickr8k"):
        source = build_train_source(DatasetConfig(type="flickr8k", path=root, split="train"))
    assert len(source) == 6
    assert [source.name(i) for i in range(6)] == SPLITS["train"]
    assert source.captions(2) == [f"{NAMES[2]} caption {k} ." for k in range(5)]
    image, captions = source[5]
    assert image.size == (21, 12) and image.mode == "RGB"
    assert np.asarray(image)[0, 0, 2] > 150
    assert captions == source.captions(5)
    assert DANGLING in caplog.text and "skipped" in caplog.text


def test_test_split_for_retrieval(official):
    test = open_split(official, "test")
    assert [test.name(i) for i in range(len(test))] == SPLITS["test"]
    assert all(len(test.captions(i)) == 5 for i in range(len(test)))
    dev = build_train_source(DatasetConfig(type="flickr8k", path=official, split="dev"))
    assert [dev.name(i) for i in range(len(dev))] == SPLITS["dev"]


def test_split_images_missing_on_disk_are_dropped_with_a_warning(tmp_path, caplog):
    root = make_flickr(tmp_path, "Flicker8k_Dataset", "Flickr8k_text")
    os.remove(tmp_path / "Flicker8k_Dataset" / NAMES[1])
    with caplog.at_level(logging.WARNING, logger="clip.data.flickr8k"):
        source = build_train_source(DatasetConfig(type="flickr8k", path=root))
    assert len(source) == 5 and NAMES[1] not in [source.name(i) for i in range(5)]
    assert "1 image(s) listed in" in caplog.text and NAMES[1] in caplog.text


def test_missing_directory_names_the_path(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(UserError, match=f"dataset directory '{missing}' does not exist"):
        build_train_source(DatasetConfig(type="flickr8k", path=missing))
    with pytest.raises(UserError, match="data path is not set"):
        build_train_source(DatasetConfig(type="flickr8k"))


def test_missing_image_folder_or_token_file_names_what_was_tried(tmp_path):
    (tmp_path / "Flickr8k_text").mkdir()
    with pytest.raises(UserError, match="no image directory found.*Flicker8k_Dataset"):
        build_train_source(DatasetConfig(type="flickr8k", path=str(tmp_path)))
    (tmp_path / "Flicker8k_Dataset").mkdir()
    with pytest.raises(UserError, match="Flickr8k.token.txt"):
        build_train_source(DatasetConfig(type="flickr8k", path=str(tmp_path)))


def test_missing_split_file_names_the_path(tmp_path):
    root = make_flickr(tmp_path, "Flicker8k_Dataset", "Flickr8k_text")
    split_file = tmp_path / "Flickr8k_text" / "Flickr_8k.devImages.txt"
    os.remove(split_file)
    with pytest.raises(UserError, match=f"split file '{split_file}' does not exist"):
        build_train_source(DatasetConfig(type="flickr8k", path=root, split="dev"))
    with pytest.raises(UserError, match="'validation' is not a Flickr8k split"):
        build_train_source(DatasetConfig(type="flickr8k", path=root, split="validation"))


def test_malformed_token_line_is_a_one_line_user_error():
    with pytest.raises(UserError, match=r"tok.txt line 2: expected") as info:
        parse_tokens(["a.jpg#0\tA cat .", "b.jpg A dog without a tab"], "tok.txt")
    assert "\n" not in str(info.value)
    assert parse_tokens(["a.jpg#1\tsecond", "", "a.jpg#0\tfirst"], "t") == {"a.jpg": ["first", "second"]}


def test_sha256_mismatch_names_the_file(official):
    with pytest.raises(UserError, match="Flickr8k.token.txt' has digest .* expected 00"):
        build_train_source(DatasetConfig(type="flickr8k", path=official, sha256={"Flickr8k.token.txt": "00"}))
