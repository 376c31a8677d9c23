"""Every CLI parses with common.errors.ArgumentParser: a usage mistake is one line and exit 2, --help complete."""
import importlib

import pytest

CLIS = [
    ("launcher.cli", [], "python -m launcher"),
    ("launcher.cli", ["run"], "python -m launcher run"),
    ("launcher.cli", ["doctor"], "python -m launcher doctor"),
    ("clip.config", [], "python -m clip.config"),
    ("clip.train", [], "python -m clip.train"),
    ("clip.eval", [], "python -m clip.eval"),
    ("clip.predict", [], "python -m clip.predict"),
    ("clip.__main__", [], "python -m clip"),
]


@pytest.mark.parametrize("module, prefix, prog", CLIS)
def test_usage_mistake_is_one_line_exit_2(module, prefix, prog, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exc:
        main(prefix + ["--no-such-option"])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()  # argparse reports unknown options from the top-level parser
    assert len(lines) == 1 and lines[0].startswith(f"error: {prog.split(' run')[0].split(' doctor')[0]}: ")
    assert "--no-such-option" in lines[0] or "required" in lines[0]


@pytest.mark.parametrize("module, prefix, prog", CLIS)
def test_help_is_complete(module, prefix, prog, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exc:
        main(prefix + ["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {prog}") and "-h, --help" in out and len(out.splitlines()) > 3
