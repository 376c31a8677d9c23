"""CSV/TSV caption tables (open_clip's format) with real image files."""
import numpy as np
import pytest
from PIL import Image

from clip.data import DatasetConfig, build_train_source
from clip.data.captions import separator_for
from launcher.errors import UserError


@pytest.fixture()
def table_dir(tmp_path):
    (tmp_path / "images").mkdir()
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (10, 10), colour).save(tmp_path / "images" / f"{i}.png")
    return tmp_path


def test_csv_relative_paths_resolve_against_the_table_not_the_cwd(table_dir, tmp_path_factory, monkeypatch):
    (table_dir / "train.csv").write_text(
        'filepath,title,extra\nimages/0.png,a red square,x\nimages/1.png,"a green, bright square",y\n'
        f'{table_dir / "images" / "2.png"},a blue square,z\nimages/0.png,"a red\nsquare",w\n')
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    source = build_train_source(DatasetConfig(type="csv", path=str(table_dir / "train.csv")))
    assert len(source) == 3
    assert source.captions(0) == ["a red square", "a red\nsquare"]  # rows of one image merge
    assert source.captions(1) == ["a green, bright square"]
    assert [source.name(i) for i in range(3)][:2] == ["images/0.png", "images/1.png"]
    assert tuple(np.asarray(source.image(2))[5, 5]) == (0, 0, 255)


def test_tsv_with_custom_columns(table_dir):
    (table_dir / "pairs.tsv").write_text("caption\timage\na red one\timages/0.png\na green one\timages/1.png\n")
    source = build_train_source(DatasetConfig(type="csv", path=str(table_dir / "pairs.tsv"),
                                              csv_image_key="image", csv_caption_key="caption"))
    assert len(source) == 2 and source.captions(1) == ["a green one"]
    assert tuple(np.asarray(source[1][0])[0, 0]) == (0, 255, 0)


def test_separator_auto_and_override():
    assert separator_for("a/b.TSV", None) == "\t"
    assert separator_for("a/b.csv", None) == ","
    assert separator_for("a/b.txt", None) == ","
    assert separator_for("a/b.tsv", "|") == "|"


def test_bad_header_names_file_and_column(table_dir):
    path = table_dir / "bad.csv"
    path.write_text("path,caption\nimages/0.png,a red square\n")
    with pytest.raises(UserError, match=f"{path}: header has no column 'filepath' \\(data.csv_image_key\\)") as info:
        build_train_source(DatasetConfig(type="csv", path=str(path)))
    assert "['path', 'caption']" in str(info.value)
    with pytest.raises(UserError, match="no column 'title' \\(data.csv_caption_key\\)"):
        build_train_source(DatasetConfig(type="csv", path=str(path), csv_image_key="path"))


def test_row_errors_name_the_line(table_dir):
    path = table_dir / "rows.csv"
    path.write_text("filepath,title\nimages/0.png,ok\nimages/1.png,\n")
    with pytest.raises(UserError, match=f"{path} line 3: column 'title' is empty"):
        build_train_source(DatasetConfig(type="csv", path=str(path)))
    path.write_text("filepath,title\nimages/0.png\n")
    with pytest.raises(UserError, match="line 2: expected 2 columns separated by ','"):
        build_train_source(DatasetConfig(type="csv", path=str(path)))
    path.write_text("filepath,title\n")
    with pytest.raises(UserError, match="no rows after the header"):
        build_train_source(DatasetConfig(type="csv", path=str(path)))


def test_missing_table_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="caption table .*nope.csv' does not exist"):
        build_train_source(DatasetConfig(type="csv", path=str(tmp_path / "nope.csv")))


def test_unknown_dataset_type_lists_the_choices():
    with pytest.raises(UserError, match="'coco' is not a caption dataset \\(expected one of shapes, flickr8k, csv, "
                                        "cifar100, imagefolder, webdataset, mindrecord, clip_benchmark\\)"):
        build_train_source(DatasetConfig(type="coco"))
