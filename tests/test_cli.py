import json

import pytest

from qamdt.cli.main import build_parser, main


def subcommand_paths():
    parser = build_parser()
    groups = next(a for a in parser._actions if a.dest == "group")
    for name, group in groups.choices.items():
        yield [name]
        # Some commands (train, generate, evaluate) have no sub-commands.
        commands = next((a for a in group._actions if a.dest == "command"), None)
        for command in commands.choices if commands is not None else ():
            yield [name, command]


@pytest.mark.parametrize("path", list(subcommand_paths()), ids=" ".join)
def test_help_on_every_level(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*path, "--help"])
    assert exit_info.value.code == 0
    assert "usage: qamdt" in capsys.readouterr().out


def test_top_level_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "corpus" in out and "manifest" in out


def test_bad_corpus_settings_exit_with_a_one_line_error(tmp_path, capsys):
    config = tmp_path / "corpus.yaml"
    config.write_text("clips: 0\n")
    assert main(["corpus", "build", "--out", str(tmp_path / "out"), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "clips must be > 0" in err and "Traceback" not in err


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_manifest_validate_reports_line_and_field(tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    write_rows(
        manifest,
        [{"id": "a", "audio": "a.wav"}, {"id": "b", "audio": "b.wav", "quality_level": 9}],
    )
    assert main(["manifest", "validate", str(manifest)]) == 1
    err = capsys.readouterr().err
    assert "line 2" in err and "quality_level" in err


def test_manifest_validate_checks_audio_files(tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    write_rows(manifest, [{"id": "a", "audio": "missing.wav"}])
    assert main(["manifest", "validate", str(manifest)]) == 0
    assert main(["manifest", "validate", str(manifest), "--check-audio"]) == 1
    assert "missing.wav" in capsys.readouterr().err


def test_manifest_stats_and_merge(tmp_path, capsys):
    base = tmp_path / "base.jsonl"
    write_rows(base, [{"id": str(i), "audio": f"{i}.wav"} for i in range(4)])
    shard0, shard1 = tmp_path / "s0.jsonl", tmp_path / "s1.jsonl"
    write_rows(shard0, [{"id": "0", "audio": "0.wav", "pmos": 3.0}])
    write_rows(shard1, [{"id": "3", "audio": "3.wav", "pmos": 4.0}])
    out = tmp_path / "merged.jsonl"
    args = ["manifest", "merge", str(shard0), str(shard1), "--base", str(base), "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["manifest", "stats", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["clips"] == 4
    assert summary["pmos"]["mean"] == pytest.approx(3.5)
