"""The disk fills up mid-write (a small tmpfs, mounted for the test): during a checkpoint save, a conversion and
the writing of eval.json. Each time: the previous file is intact, no temporary file remains, the error is one
line naming the file and "disk full", and the command exits non-zero. A size-limited file (RLIMIT_FSIZE) gives
the same guarantees with "file too large"."""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from launcher.errors import exit_on_user_error

from cifar_files import RAW_NAMES, draw_images, write_cifar
from crafted_weights import crafted_state, tiny_model_json, torch_save

REPO = Path(__file__).resolve().parent.parent


class SmallDisk(type(Path())):
    """A mounted tmpfs directory; fill(keep) leaves only `keep` bytes free."""

    def fill(self, keep: int = 0) -> None:
        stat = os.statvfs(self)
        with open(self / "filler", "ab") as f:
            f.write(b"\0" * max(stat.f_bavail * stat.f_frsize - keep, 0))
            f.flush()
            os.fsync(f.fileno())


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (we run as root here), unmounted afterwards."""
    mount = SmallDisk(tmp_path / "disk")
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != "filler"}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.processes
def test_checkpoint_save_on_a_full_disk_keeps_the_previous_checkpoint(small_disk, capsys):
    import mindspore as ms

    from clip.train import checkpoint

    out = small_disk / "run"
    meta = {"step": 1, "epoch": 0, "step_in_epoch": 1, "global_batch": 8, "seed": 0}
    params = [ms.Parameter(ms.Tensor(np.arange(50000, dtype=np.float32)), name="w")]
    checkpoint.save(params, str(out), meta, keep_last=3)
    folder = out / "checkpoints"
    before = snapshot(folder)
    small_disk.fill(keep=4096)
    save = exit_on_user_error(lambda: checkpoint.save(params, str(out), dict(meta, step=2), keep_last=3))
    with pytest.raises(SystemExit) as exit_info:
        save()
    assert exit_info.value.code == 2
    line = one_error_line(capsys)
    assert "step_00000002.ckpt" in line and "disk full" in line
    assert snapshot(folder) == before  # last.ckpt and step 1 intact, nothing else
    stored, restored = checkpoint.load(str(folder / "last.ckpt"))
    assert restored["step"] == 1 and np.array_equal(stored["w"].asnumpy(), np.arange(50000, dtype=np.float32))


@pytest.mark.processes
def test_convert_on_a_full_disk_keeps_the_previous_output(small_disk, tmp_path, capsys):
    from clip.model.convert import main

    source = torch_save(tmp_path / "tiny.pt", crafted_state())
    dst = small_disk / "tiny.ckpt"
    model = tiny_model_json(tmp_path / "tiny.json")
    assert main([source, str(dst), "--model", model]) == 0
    capsys.readouterr()
    before = snapshot(small_disk)
    small_disk.fill(keep=8192)
    with pytest.raises(SystemExit) as exit_info:
        main([source, str(dst), "--model", model, "--dtype", "float32"])
    assert exit_info.value.code == 2
    line = one_error_line(capsys)
    assert str(dst) in line and "disk full" in line
    assert snapshot(small_disk) == before


@pytest.mark.processes
def test_eval_json_on_a_full_disk_keeps_the_previous_result(small_disk, tmp_path, capsys, monkeypatch):
    import mindspore as ms

    from clip.eval import main
    from clip.model import create_model

    monkeypatch.chdir(tmp_path)
    ms.set_seed(0)
    ckpt = str(tmp_path / "tiny.ckpt")
    ms.save_checkpoint(create_model("clip_tiny"), ckpt)
    images, labels = draw_images(len(RAW_NAMES), 1, seed=3)
    cifar = write_cifar(str(tmp_path / "cifar"), images, labels, RAW_NAMES)
    out = small_disk / "out"
    out.mkdir()
    (out / "eval.json").write_text('{"top1": 12.5}\n')
    before = snapshot(out)
    small_disk.fill(keep=0)
    argv = ["--checkpoint", ckpt, "--set", "data.eval.type=cifar100", "--set", f"data.eval.path={cifar}",
            "--set", "data.eval.templates=['a {}.']", "--set", "model.name=clip_tiny", "--set", f"output_dir={out}"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # evaluation logs its progress before
    assert line.startswith("error: ") and str(out / "eval.json") in line and "disk full" in line
    assert snapshot(out) == before and sorted(os.listdir(out)) == ["eval.json"]


@pytest.mark.processes
def test_size_limited_file_is_one_line_and_leaves_nothing(tmp_path):
    """RLIMIT_FSIZE (no root needed): the converted file would exceed the limit; as a real process."""
    source = torch_save(tmp_path / "tiny.pt", crafted_state())
    out = tmp_path / "out"
    out.mkdir()

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MS_", "RANK_"))}
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    proc = subprocess.run([sys.executable, "-m", "clip.convert", source, str(out / "tiny.ckpt"), "--model",
                           tiny_model_json(tmp_path / "tiny.json")],
                          cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=180, preexec_fn=limit)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "file too large" in lines[0] and str(out / "tiny.ckpt") in lines[0]
    assert os.listdir(out) == []


def test_user_error_names_the_reason_for_every_errno():
    from launcher.safe_write import reason

    assert reason(OSError(28, "No space left on device")) == "disk full"
    assert reason(PermissionError(13, "Permission denied")) == "permission denied"
    assert reason(IsADirectoryError(21, "Is a directory")) == "is a directory"
    assert reason(RuntimeError("first line\nsecond")) == "first line"


@pytest.mark.parametrize("name", ["a" * 255, "\u00e9" * 127, "w" * 250 + ".ckpt", "x." + "y" * 252])
def test_an_output_name_of_the_longest_valid_length_is_written(tmp_path, name):
    """The temporary name adds characters; it is cut so that a valid 255-byte output name still works."""
    from launcher.safe_write import write_text

    write_text(str(tmp_path / name), "kept\n")
    assert os.listdir(tmp_path) == [name] and (tmp_path / name).read_text() == "kept\n"
