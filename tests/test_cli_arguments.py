"""Bad command-line values are refused by the parser, naming the flag, before any work."""

from __future__ import annotations

import pytest

from qamdt.cli.main import main

CASES = [
    (["corpus", "build", "--out", "OUT", "--workers", "0"], "--workers"),
    (["corpus", "build", "--out", "OUT", "--clips", "-3"], "--clips"),
    (["corpus", "build", "--out", "OUT", "--seed", "-1"], "--seed"),
    (["corpus", "build", "--out", "OUT", "--clean-fraction", "1.5"], "--clean-fraction"),
    (["corpus", "build", "--out", "OUT", "--clean-fraction", "nan"], "--clean-fraction"),
    (["evaluate", "--generated", "G", "--reference", "R", "--out", "O", "--batch-size", "0"],
     "--batch-size"),
    (["evaluate", "--generated", "G", "--reference", "R", "--out", "O",
      "--examples-per-level", "-1"], "--examples-per-level"),
    (["model", "info", "--config", "C", "--text-length", "0"], "--text-length"),
    (["train", "--config", "C", "--out", "O", "--max-minutes", "-1"], "--max-minutes"),
    (["train", "--config", "C", "--out", "O", "--max-minutes", "nan"], "--max-minutes"),
    (["train", "--config", "C", "--out", "O", "--max-steps", "0"], "--max-steps"),
    (["train-vae", "--manifest", "M", "--out", "O", "--epochs", "inf"], "--epochs"),
    (["mos", "train", "--data", "D", "--out", "O", "--max-minutes", "0"], "--max-minutes"),
    (["mos", "train", "--data", "D", "--out", "O", "--patience", "0"], "--patience"),
    (["mos", "predict", "a.wav", "--model", "M", "--batch-size", "0"], "--batch-size"),
    (["captions", "caption", "a.wav", "--model", "M", "--batch-size", "0"], "--batch-size"),
    (["manifest", "validate", "M", "--max-errors", "0"], "--max-errors"),
    (["cache", "--config", "C", "--out", "O", "--shard", "2/2"], "--shard"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "flag"), CASES, ids=[" ".join(c[0][:2] + [c[1]]) for c in CASES])
def test_bad_values_are_refused_naming_the_flag(argv, flag, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing was written: refused before any work
