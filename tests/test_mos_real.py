"""Real-music sources, degraded versions, grouped training with ranking, and the protocol."""

import dataclasses
import functools
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from mos_predictor import real_music
from mos_predictor.config import MosModelConfig
from mos_predictor.grouped import (
    GroupBatches,
    centred_difference_loss,
    draw_epochs,
    pairwise_rank_loss,
    pool_metrics,
    refresh_train_pool,
)
from mos_predictor.models import build_mos_model, load_mos_model
from mos_predictor.protocol import (
    ProtocolSettings,
    make_protocol_clips,
    run_protocol,
    score_protocol,
    settings_for_model,
)
from mos_predictor.real_music import (
    Excerpt,
    check_source_allowed,
    coded_kbps_per_channel,
    is_validation_file,
    plan_excerpts,
    read_excerpt,
    source_files,
)
from mos_predictor.train import _mixed_loss
from mos_predictor.train_config import MosTrainConfig
from mos_predictor.versions import (
    ContentChange,
    ContentSettings,
    build_version_pool,
    draw_content_changes,
    read_changed,
)
from qamdt.cli.main import main
from qamdt.degradations import KINDS, ChainSettings, reference_quality
from qamdt.errors import ConfigError
from qamdt.manifest import ClipRecord, write_manifest

ROOT = Path(__file__).resolve().parents[1]
SR = 22050
DSP_KINDS = ("coloured_noise", "bandpass", "hum", "dropouts", "bit_depth")


def song(seconds, seed, rate=SR):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    notes = rng.choice([220, 247, 262, 294, 330, 349, 392, 440], size=int(seconds * 4))
    freq = np.repeat(notes, int(rate / 4))[: t.size]
    freq = np.pad(freq, (0, t.size - freq.size), mode="edge")
    phase = 2 * np.pi * np.cumsum(freq) / rate
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) + 0.05 * rng.standard_normal(t.size)
    return (0.4 * x / np.abs(x).max()).astype(np.float32)


@pytest.fixture(scope="module")
def music(tmp_path_factory):
    """Two 'packages' of stereo songs at 44.1 kHz, a silent file and a broken one."""
    root = tmp_path_factory.mktemp("music")
    for name, count, seed in (("band-a", 4, 0), ("band-b", 3, 10)):
        folder = root / name / "music"
        folder.mkdir(parents=True)
        for i in range(count):
            left = song(9.0, seed + i, 44100)
            sf.write(folder / f"track{i}.ogg", np.stack([left, left * 0.8], 1), 44100)
    sf.write(root / "band-a" / "music" / "silence.wav", np.zeros(44100 * 6), 44100)
    (root / "band-b" / "music" / "broken.ogg").write_bytes(b"OggS not really")
    return root


def test_sources_list_audio_and_refuse_the_reserved_songs(music, tmp_path):
    files = source_files(str(music / "band-a"))
    assert [f.rsplit("/", 1)[1] for f in files] == [
        "silence.wav",
        *[f"track{i}.ogg" for i in range(4)],
    ]
    with pytest.raises(ConfigError, match="fretsonfire.*reserved for evaluation"):
        source_files("fretsonfire-songs-muldjord")
    with pytest.raises(ConfigError, match="reserved"):
        check_source_allowed("/usr/share/games/fretsonfire/data/songs")
    with pytest.raises(ConfigError, match="neither a folder nor an installed Debian package"):
        source_files(str(tmp_path / "no-such-source"))
    with pytest.raises(ConfigError, match="reserved"):
        MosTrainConfig.from_dict({"data": "csv:x.csv", "holdout_sources": ["fretsonfire-game"]})
    with pytest.raises(ConfigError, match="gain_augment_db"):
        MosTrainConfig.from_dict({"data": "csv:x.csv", "gain_augment_db": -3})
    with pytest.raises(ConfigError, match="both trained on and held out"):
        MosTrainConfig.from_dict(
            {"data": "csv:x.csv", "real_sources": ["a"], "holdout_sources": ["a"]}
        )


def test_packages_give_their_song_folders_not_their_sound_effects(tmp_path, monkeypatch):
    """The layouts of the Debian packages configs/mos/embedded.yaml names (dpkg -L faked)."""
    layouts = {
        "supertux-data": ["games/supertux2/music/forest/a.ogg", "games/supertux2/sounds/b.wav"],
        "openclonk-data": ["games/openclonk/Music.ocg/c.ogg", "games/openclonk/Sound.ocg/d.ogg"],
        "xmoto-data": ["games/xmoto/Textures/Musics/e.ogg", "games/xmoto/Sounds/f.ogg"],
        "marsshooter-data": [
            "games/marsshooter/audio/music/g.ogg",
            "games/marsshooter/audio/h.ogg",
        ],
        "hedgewars-data": ["games/hedgewars/Data/Music/i.ogg", "games/hedgewars/Data/Sounds/j.ogg"],
    }
    for paths in layouts.values():
        for path in paths:
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_bytes(b"")

    def fake_dpkg(args, **kwargs):
        listing = [str(tmp_path / p) for p in layouts.get(args[-1], [])]
        folders = sorted({str(Path(p).parent) for p in listing})
        return subprocess.CompletedProcess(args, 0 if listing else 1, "\n".join(folders + listing))

    monkeypatch.setattr(real_music.subprocess, "run", fake_dpkg)
    monkeypatch.chdir(tmp_path)
    for package, paths in layouts.items():
        assert source_files(package) == [str(tmp_path / paths[0])]
    with pytest.raises(ConfigError, match="neither a folder nor an installed Debian package"):
        source_files("no-such-package")


def test_default_sources_are_installed_by_setup_and_never_reserved():
    config = yaml.safe_load((ROOT / "configs/mos/embedded.yaml").read_text())
    setup = (ROOT / "scripts/setup.sh").read_text()
    sources = config["real_sources"] + config["holdout_sources"]
    assert len(set(sources)) == len(sources) >= 3
    for source in sources:
        check_source_allowed(source)
        assert re.search(rf"\s{re.escape(source)}[\s;]", setup), source


def test_excerpts_are_seeded_spread_and_skip_silence_and_broken_files(music):
    failures = []
    sources = [str(music / "band-a"), str(music / "band-b")]
    excerpts = plan_excerpts(sources, 2, 2.0, seed=0, failures=failures)
    assert excerpts == plan_excerpts(sources, 2, 2.0, seed=0, failures=[])
    assert len(excerpts) == 2 * (5 + 3)
    assert len(failures) == 1 and "broken.ogg" in failures[0]
    with pytest.raises(Exception, match="broken.ogg"):
        plan_excerpts(sources, 2, 2.0, seed=0)
    track = [e for e in excerpts if e.path.endswith("band-a/music/track0.ogg")]
    assert len(track) == 2 and 0.45 <= track[0].start < 4.05 <= track[1].start <= 6.55
    wave = read_excerpt(track[0], SR)
    assert wave.shape == (2 * SR,) and wave.dtype == np.float32
    silent = [e for e in excerpts if e.path.endswith("silence.wav")]
    assert read_excerpt(silent[0], SR) is None
    failures.clear()
    few = plan_excerpts(sources, 1, 2.0, seed=0, files_per_source=2, failures=failures)
    # The first and last file of each source; band-b's first is the broken one.
    assert [e.path.rsplit("/", 1)[1] for e in few] == ["silence.wav", "track3.ogg", "track2.ogg"]
    assert len(failures) == 1


def test_a_bitrate_floor_leaves_out_low_bitrate_encodes(music):
    silence = str(music / "band-a" / "music" / "silence.wav")  # 16-bit PCM, 44.1 kHz, mono
    info = sf.info(silence)
    by_hand = Path(silence).stat().st_size * 8 / 1000 / info.duration
    assert coded_kbps_per_channel(silence) == pytest.approx(by_hand)
    assert by_hand == pytest.approx(705.6, rel=0.01)
    tracks = sorted((music / "band-a" / "music").glob("track*.ogg"))
    rates = [coded_kbps_per_channel(str(t)) for t in tracks]
    floor = float(np.median(rates))
    skipped = []
    kept = plan_excerpts(
        [str(music / "band-a")], 1, 2.0, seed=0, min_kbps_per_channel=floor, skipped=skipped
    )
    expected = {str(t.resolve()) for t, r in zip(tracks, rates, strict=True) if r >= floor}
    assert {e.path for e in kept} == expected | {str(Path(silence).resolve())}
    assert len(skipped) == sum(r < floor for r in rates) > 0
    assert all("kbit/s per channel, below" in line for line in skipped)


def test_validation_files_are_a_stable_share():
    names = [f"/x/track{i}.ogg" for i in range(400)]
    chosen = [n for n in names if is_validation_file(n, 8)]
    assert 25 <= len(chosen) <= 75
    assert chosen == [n for n in names if is_validation_file(n, 8)]
    assert not any(is_validation_file(n, 0) for n in names)


@pytest.fixture(scope="module")
def pool(music):
    excerpts = plan_excerpts([str(music / "band-a")], 2, 2.0, seed=0)
    return build_version_pool(excerpts, SR, 4, ChainSettings(kinds=DSP_KINDS), seed=5)


def test_version_pool_keeps_the_clean_first_and_the_recipe_targets(pool):
    assert pool.waves.shape == (8, 4, 2 * SR) and pool.waves.dtype == np.float16
    assert np.all(pool.targets[:, 0] == 5.0) and pool.chains[0][0] == []
    for targets, chains in zip(pool.targets, pool.chains, strict=True):
        for target, chain in zip(targets, chains, strict=True):
            assert target == pytest.approx(reference_quality(chain), abs=1e-4)
            assert all(step["type"] in DSP_KINDS for step in chain)
    assert np.abs(pool.waves.astype(np.float32)).max() == pytest.approx(0.5, abs=1e-3)


def test_version_pool_does_not_depend_on_the_number_of_processes(music, pool):
    excerpts = plan_excerpts([str(music / "band-a")], 2, 2.0, seed=0)
    other = build_version_pool(excerpts, SR, 4, ChainSettings(kinds=DSP_KINDS), seed=5, workers=2)
    assert np.array_equal(other.waves, pool.waves)
    assert np.array_equal(other.targets, pool.targets)


def test_refreshed_pools_draw_new_chains_for_the_same_clean_excerpts(music, pool):
    config = MosTrainConfig.from_dict(
        {"data": "corpus:x", "seed": 5, "real_versions": 4, "real_refresh_epochs": 2,
         "real_workers": 1, "holdout_families": [k for k in KINDS if k not in DSP_KINDS]},
        "test",
    )  # fmt: skip
    model = MosModelConfig.from_dict({"kind": "embedded", "window_seconds": 2.0})
    assert refresh_train_pool(pool, config, model, epoch=1, progress=False) is pool
    fresh = refresh_train_pool(pool, config, model, epoch=2, progress=False)
    assert fresh.draw == 1 and fresh.excerpts == pool.excerpts
    assert np.array_equal(fresh.waves[:, 0], pool.waves[:, 0])
    assert not np.array_equal(fresh.waves[:, 1:], pool.waves[:, 1:])
    assert fresh.chains != pool.chains and np.all(fresh.targets[:, 0] == 5.0)
    assert refresh_train_pool(fresh, config, model, epoch=3, progress=False) is fresh
    again = refresh_train_pool(pool, config, model, epoch=3, progress=False)
    assert np.array_equal(again.waves, fresh.waves) and again.chains == fresh.chains
    moved = dataclasses.replace(
        config,
        real_fresh_positions=True,
        real_sources=(str(music / "band-a"),),
        real_excerpts_per_file=2,
    )
    elsewhere = refresh_train_pool(pool, moved, model, epoch=2, progress=False)
    assert [e.path for e in elsewhere.excerpts] == [e.path for e in pool.excerpts]
    assert all(a.start != b.start for a, b in zip(elsewhere.excerpts, pool.excerpts, strict=True))
    assert elsewhere.excerpts == refresh_train_pool(pool, moved, model, 3, False).excerpts
    once = dataclasses.replace(config, real_refresh_epochs=0)
    assert refresh_train_pool(pool, once, model, epoch=7, progress=False) is pool
    with pytest.raises(ConfigError, match="real_refresh_epochs"):
        MosTrainConfig.from_dict({"data": "corpus:x", "real_refresh_epochs": -1}, "test")
    for key, bad in (("real_mix_share", 1.5), ("real_speed_range", 0.5), ("real_tilt_range", 7)):
        with pytest.raises(ConfigError, match=key):
            MosTrainConfig.from_dict({"data": "corpus:x", key: bad}, "test")


def test_a_draw_made_for_its_epochs_excerpts_gives_the_full_draws_batches(pool):
    config = MosTrainConfig.from_dict(
        {"data": "corpus:x", "seed": 5, "real_versions": 4, "real_refresh_epochs": 2,
         "epochs": 5, "groups_per_batch": 2, "group_size": 3, "real_workers": 1,
         "holdout_families": [k for k in KINDS if k not in DSP_KINDS]},
        "test",
    )  # fmt: skip
    model = MosModelConfig.from_dict({"kind": "embedded", "window_seconds": 2.0})
    assert list(draw_epochs(config, 2)) == [2, 3] and list(draw_epochs(config, 3)) == [3]
    assert list(draw_epochs(config, 4)) == [4]
    assert list(draw_epochs(dataclasses.replace(config, real_refresh_epochs=0), 2)) == []
    groups = GroupBatches.for_config(pool, config)
    needed = groups.excerpts_for_epochs(draw_epochs(config, 2), batches=1)
    assert 0 < len(needed) < len(pool)  # 2 epochs x 1 batch x 2 groups of 8 excerpts
    full = refresh_train_pool(pool, config, model, epoch=2, progress=False)
    plan = functools.partial(groups.excerpts_for_epochs, batches=1)
    part = refresh_train_pool(pool, config, model, 2, False, plan)
    assert full.made is None and part.made.tolist() == [i in needed for i in range(len(pool))]
    assert np.array_equal(part.waves[needed], full.waves[needed])
    assert part.chains[needed[0]] == full.chains[needed[0]]
    for epoch in (2, 3):
        a, b = GroupBatches.for_config(full, config), GroupBatches.for_config(part, config)
        a.set_epoch(epoch), b.set_epoch(epoch)
        first, second = a.next(), b.next()
        assert all(torch.equal(first[key], second[key]) for key in ("wave", "mos", "group"))
        with pytest.raises(RuntimeError, match="has no versions"):
            for _ in range(len(pool)):  # the next pass reaches an excerpt not made
                b.next()


def test_content_changes_are_seeded_and_mix_other_excerpts(music):
    excerpts = plan_excerpts([str(music / "band-a")], 2, 2.0, seed=0)
    none = draw_content_changes(excerpts, ContentSettings(), seed=5, draw=0)
    assert all(c == ContentChange(None, c.balance, 1.0) for c in none)
    changes = draw_content_changes(excerpts, ContentSettings(1.0, 0.2), seed=5, draw=0)
    assert changes == draw_content_changes(excerpts, ContentSettings(1.0, 0.2), seed=5, draw=0)
    assert changes != draw_content_changes(excerpts, ContentSettings(1.0, 0.2), seed=5, draw=1)
    for excerpt, change in zip(excerpts, changes, strict=True):
        assert change.partner in excerpts and change.partner != excerpt
        assert 0.35 <= change.balance <= 0.65 and 0.8 <= change.speed <= 1.2
    speeds = [c.speed for c in changes]
    assert min(speeds) < 0.95 and max(speeds) > 1.05
    assert all(c.tilt == 0.0 for c in changes)
    tilted = draw_content_changes(excerpts, ContentSettings(1.0, 0.2, 2.0), seed=5, draw=0)
    assert [c.speed for c in tilted] == speeds  # the other draws do not move
    tilts = [c.tilt for c in tilted]
    assert all(-2.0 <= t <= 2.0 for t in tilts) and min(tilts) < 0 < max(tilts)
    mixed = build_version_pool(
        excerpts, SR, 3, ChainSettings(kinds=DSP_KINDS), seed=5, content=ContentSettings(1.0)
    )
    plain = build_version_pool(excerpts, SR, 3, ChainSettings(kinds=DSP_KINDS), seed=5)
    assert mixed.waves.shape == plain.waves.shape and np.all(mixed.targets[:, 0] == 5.0)
    assert not np.array_equal(mixed.waves[:, 0], plain.waves[:, 0])


def test_a_content_change_plays_faster_and_mixes_at_equal_loudness(tmp_path):
    rate = 16000
    t = np.arange(3 * rate) / rate
    sf.write(tmp_path / "a.wav", 0.5 * np.sin(2 * np.pi * 400 * t), rate)
    sf.write(tmp_path / "b.wav", 0.05 * np.sin(2 * np.pi * 1000 * t), rate)
    a = Excerpt("x", str(tmp_path / "a.wav"), 0.5, 1.0)
    b = Excerpt("x", str(tmp_path / "b.wav"), 0.5, 1.0)

    def peak_hz(wave):
        spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
        return np.fft.rfftfreq(wave.size, 1 / rate)[np.argmax(spectrum)]

    faster = read_changed(a, rate, ContentChange(speed=1.1))
    assert faster.shape == (rate,) and peak_hz(faster) == pytest.approx(440, abs=2)
    mix = read_changed(a, rate, ContentChange(partner=b, balance=0.5))
    spectrum = np.abs(np.fft.rfft(mix))
    assert spectrum[400] == pytest.approx(spectrum[1000], rel=0.02)
    # A tilt of 3 dB per octave around 1 kHz: 400 Hz is log2(0.4) octaves below it.
    tilted = np.abs(np.fft.rfft(read_changed(a, rate, ContentChange(b, 0.5, tilt=3.0))))
    assert tilted[1000] == pytest.approx(spectrum[1000], rel=0.02)
    expected = 10 ** (3.0 * np.log2(0.4) / 20)
    assert tilted[400] / spectrum[400] == pytest.approx(expected, rel=0.02)


def test_group_batches_hold_versions_of_one_excerpt_and_replay_per_epoch(pool):
    batches = GroupBatches(pool, groups_per_batch=2, group_size=3, seed=1)
    first = batches.next()
    assert first["wave"].shape == (6, 2 * SR)
    assert first["group"].tolist() == [0, 0, 0, 1, 1, 1]
    for g in range(2):
        rows = first["wave"][first["group"] == g].numpy()
        owners = {
            n
            for row in rows
            for n in range(len(pool))
            for v in range(4)
            if np.array_equal(row, pool.waves[n, v].astype(np.float32))
        }
        assert len(owners) == 1
    batches.set_epoch(0)
    again = batches.next()
    assert torch.equal(first["wave"], again["wave"]) and torch.equal(first["mos"], again["mos"])
    with pytest.raises(ValueError, match="group_size"):
        GroupBatches(pool, 2, 5, seed=1)


def test_group_batches_name_each_versions_kinds_for_the_kind_head(pool):
    batches = GroupBatches(pool, groups_per_batch=3, group_size=3, seed=2, kinds=DSP_KINDS)
    batch = batches.next()
    assert batch["kinds"].shape == (9, len(DSP_KINDS))
    waves = pool.waves.astype(np.float32)
    for row, kinds in zip(batch["wave"].numpy(), batch["kinds"].numpy(), strict=True):
        n, v = next((n, v) for n in range(len(pool)) for v in range(4)
                    if np.array_equal(row, waves[n, v]))  # fmt: skip
        expected = np.zeros(len(DSP_KINDS), dtype=np.float32)
        for step in pool.chains[n][v]:
            i = DSP_KINDS.index(step["type"])
            expected[i] = max(expected[i], step["severity"])
        assert np.allclose(kinds, expected)
    assert GroupBatches(pool, 1, 2, seed=2).next()["kinds"].shape == (2, 0)


def test_rank_only_kinds_leave_their_versions_out_of_the_regression_term(pool):
    batches = GroupBatches(pool, groups_per_batch=4, group_size=3, seed=3, rank_only=("hum",))
    waves = pool.waves.astype(np.float32)
    batch = batches.next()
    assert batch["regress"].any() and not batch["regress"].all()
    for row, regress in zip(batch["wave"].numpy(), batch["regress"].numpy(), strict=True):
        n, v = next((n, v) for n in range(len(pool)) for v in range(4)
                    if np.array_equal(row, waves[n, v]))  # fmt: skip
        assert regress == all(step["type"] != "hum" for step in pool.chains[n][v])
    assert GroupBatches(pool, 2, 3, seed=3).next()["regress"].all()
    config = MosTrainConfig.from_dict(
        {"data": "corpus:x", "rank_weight": 0.0, "rank_only_kinds": ["hum"]}, "test"
    )
    model = build_mos_model(MosModelConfig.from_dict({"kind": "embedded", "window_seconds": 2.0}))
    model.eval()
    corpus = {"wave": torch.zeros(2, 2 * SR), "mos": torch.tensor([3.0, 4.0])}
    real = {"wave": torch.from_numpy(waves[0, :3]), "mos": torch.tensor([5.0, 2.0, 1.0]),
            "group": torch.zeros(3, dtype=torch.int64),
            "regress": torch.tensor([True, True, False])}  # fmt: skip
    loss = _mixed_loss(model, corpus, real, config, text_aware=False)
    other = {**real, "mos": torch.tensor([5.0, 2.0, 4.0])}  # the third is not regressed
    moved = _mixed_loss(model, corpus, other, config, text_aware=False)
    assert torch.equal(loss, moved)
    regressed = _mixed_loss(model, corpus, {**real, "regress": torch.ones(3, dtype=torch.bool)},
                            config, False)  # fmt: skip
    assert not torch.equal(loss, regressed)
    with pytest.raises(ConfigError, match="rank_only_kinds"):
        MosTrainConfig.from_dict({"data": "corpus:x", "rank_only_kinds": ["echo"]}, "test")


def test_the_kind_head_is_trained_only_with_kind_weight(pool):
    config = MosModelConfig.from_dict(
        {"kind": "embedded", "window_seconds": 2.0, "kind_outputs": 5}
    )
    model = build_mos_model(config)
    output = model(torch.from_numpy(pool.waves[:2, 0].astype(np.float32)))
    assert output.omq.shape == (2,) and output.kinds.shape == (2, 5)
    plain = build_mos_model(MosModelConfig.from_dict({"kind": "embedded", "window_seconds": 2.0}))
    assert plain(torch.zeros(1, 2 * SR)).kinds is None
    with pytest.raises(ConfigError, match="kind_weight"):
        MosTrainConfig.from_dict({"data": "corpus:x", "kind_weight": -1}, "test")
    with pytest.raises(ConfigError, match="kind_outputs"):
        MosModelConfig.from_dict({"kind": "embedded", "kind_outputs": -1})


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_clean_share_sets_which_groups_hold_the_clean_recording(pool, share):
    config = MosTrainConfig.from_dict(
        {"data": "corpus:x", "groups_per_batch": 2, "group_size": 3, "real_versions": 4,
         "real_clean_share": share}, "test",
    )  # fmt: skip
    batches = GroupBatches.for_config(pool, config)
    clean = {tuple(pool.waves[n, 0].astype(np.float32)[:50]) for n in range(len(pool))}
    for _ in range(4):
        batch = batches.next()
        for g in range(2):
            rows = batch["wave"][batch["group"] == g].numpy()
            holds_clean = any(tuple(row[:50]) in clean for row in rows)
            assert holds_clean == (share == 1.0)
    with pytest.raises(ConfigError, match=r"real_clean_share must be in \[0, 1\], got 1.5"):
        MosTrainConfig.from_dict({"data": "corpus:x", "real_clean_share": 1.5}, "test")


def test_pairwise_rank_loss_matches_ranknet_by_hand():
    pred = torch.tensor([1.0, 0.0, 3.0, 2.5])
    target = torch.tensor([5.0, 1.0, 2.0, 2.05])
    groups = torch.tensor([0, 0, 1, 1])
    # Pairs: (0, 1) only; (2, 3) differ by less than min_gap 0.1.
    expected = np.log1p(np.exp(-2.0 * 1.0))
    assert float(pairwise_rank_loss(pred, target, groups)) == pytest.approx(expected, rel=1e-6)
    assert float(pairwise_rank_loss(pred, target, torch.tensor([0, 1, 2, 3]))) == 0.0
    swapped = pairwise_rank_loss(torch.tensor([0.0, 1.0]), torch.tensor([5.0, 1.0]), groups[:2])
    assert float(swapped) == pytest.approx(np.log1p(np.exp(2.0)), rel=1e-6)


def test_cross_rank_term_orders_other_excerpts_and_corpus_clips_by_hand():
    pred = torch.tensor([1.0, 0.0, 3.0, 2.5])
    target = torch.tensor([5.0, 1.0, 2.0, 2.05])
    groups = torch.tensor([0, 0, 1, 1])
    # Across groups, gaps above 1.0: (0, 2), (0, 3) and (3, 1); (2, 1) differ by 1.0 only.
    cross = pairwise_rank_loss(pred, target, groups, min_gap=1.0, across=True)
    expected = np.mean([np.log1p(np.exp(-2.0 * d)) for d in (1.0 - 3.0, 1.0 - 2.5, 2.5 - 0.0)])
    assert float(cross) == pytest.approx(expected, rel=1e-6)
    config = MosTrainConfig.from_dict({"data": "corpus:x", "rank_weight": 0.0}, "test")
    crossed = dataclasses.replace(config, cross_rank_weight=1.0, cross_rank_gap=1.0)
    model = build_mos_model(MosModelConfig.from_dict({"kind": "embedded", "window_seconds": 2.0}))
    model.eval()
    rng = np.random.default_rng(0)
    corpus = {"wave": torch.from_numpy(rng.standard_normal((2, 2 * SR)).astype(np.float32)),
              "mos": torch.tensor([1.0, 4.0])}  # fmt: skip
    real = {"wave": torch.from_numpy(rng.standard_normal((2, 2 * SR)).astype(np.float32)),
            "mos": torch.tensor([5.0, 2.0]), "group": torch.zeros(2, dtype=torch.int64),
            "regress": torch.zeros(2, dtype=torch.bool)}  # fmt: skip
    with torch.no_grad():
        scores = model(torch.cat([corpus["wave"], real["wave"]])).omq
        base = _mixed_loss(model, corpus, real, config, text_aware=False)
        added = _mixed_loss(model, corpus, real, crossed, text_aware=False) - base
    # Scores: corpus 1.0, corpus 4.0, real 5.0, real 2.0. Ranked: real 5.0 over corpus 1.0,
    # corpus 4.0 over real 2.0 and over corpus 1.0 (each corpus clip is an excerpt of its
    # own); the real pair is one excerpt, the others differ by 1.0 only.
    hand = np.mean([np.log1p(np.exp(-2.0 * float(scores[hi] - scores[lo])))
                    for hi, lo in ((2, 0), (1, 3), (1, 0))])  # fmt: skip
    assert float(added) == pytest.approx(hand, rel=1e-5)
    with pytest.raises(ConfigError, match="cross_rank_weight"):
        MosTrainConfig.from_dict({"data": "corpus:x", "cross_rank_weight": -1}, "test")


def test_regression_loss_l1_is_the_mean_absolute_error_over_corpus_and_real_clips(pool):
    model = build_mos_model(MosModelConfig.from_dict({"kind": "embedded", "window_seconds": 2.0}))
    model.eval()
    waves = torch.from_numpy(pool.waves[0, :3].astype(np.float32))
    corpus = {"wave": waves[:2], "mos": torch.tensor([3.0, 4.0])}
    real = {
        "wave": waves,
        "mos": torch.tensor([5.0, 2.0, 1.0]),
        "group": torch.zeros(3, dtype=torch.int64),
        "regress": torch.ones(3, dtype=torch.bool),
    }
    with torch.no_grad():
        scores = model(torch.cat([corpus["wave"], real["wave"]])).omq
    errors = scores - torch.cat([corpus["mos"], real["mos"]])
    losses = {}
    for kind in ("mse", "l1"):
        config = MosTrainConfig.from_dict(
            {"data": "corpus:x", "rank_weight": 0.0, "regression_loss": kind}, "test"
        )
        with torch.no_grad():
            losses[kind] = float(_mixed_loss(model, corpus, real, config, text_aware=False))
    assert losses["l1"] == pytest.approx(float(errors.abs().mean()), rel=1e-5)
    assert losses["mse"] == pytest.approx(float(errors.square().mean()), rel=1e-5)
    with pytest.raises(
        ConfigError, match=r"regression_loss must be one of \['mse', 'l1'\], got 'l2'"
    ):
        MosTrainConfig.from_dict({"data": "corpus:x", "regression_loss": "l2"}, "test")


def test_centred_difference_loss_by_hand():
    pred = torch.tensor([4.0, 3.0, 1.0, 2.0])
    target = torch.tensor([5.0, 1.0, 3.0, 3.0])
    groups = torch.tensor([0, 0, 1, 1])
    # Group 0: pred steps +0.5 / -0.5 around its mean, targets +2 / -2: errors -1.5, 1.5.
    # Group 1: pred -0.5 / +0.5, targets 0 / 0: errors -0.5, 0.5.
    expected = (1.5**2 + 1.5**2 + 0.5**2 + 0.5**2) / 4
    assert float(centred_difference_loss(pred, target, groups)) == pytest.approx(expected)
    # Where the excerpt puts its mean does not matter, only the steps inside the group.
    shifted = pred + torch.tensor([2.0, 2.0, -1.0, -1.0])
    assert float(centred_difference_loss(shifted, target, groups)) == pytest.approx(expected)
    assert float(centred_difference_loss(target + 0.7, target, groups)) == pytest.approx(0.0)


def test_pool_metrics_by_hand():
    targets = np.array([[5.0, 3.0, 1.0], [5.0, 4.0, 2.0]])
    pred = np.array([[4.0, 3.0, 2.0], [3.0, 3.5, 1.0]])
    metrics = pool_metrics(pred, targets)
    assert metrics["clean_mean"] == pytest.approx(3.5)
    assert metrics["within_srcc"] == pytest.approx((1.0 + 0.5) / 2)
    assert metrics["count"] == 6


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    records = []
    rng = np.random.default_rng(0)
    for i in range(16):
        quality = 5.0 - 4.0 * (i % 4) / 3
        wave = song(3.0, 100 + i)
        wave = wave + rng.standard_normal(wave.size).astype(np.float32) * 0.1 * (i % 4)
        sf.write(root / f"c{i}.wav", wave, SR)
        split = "train" if i < 12 else "valid"
        records.append(
            ClipRecord(id=f"c{i}", audio=f"c{i}.wav", duration=3.0, sample_rate=SR, split=split,
                       original_caption="a song", meta={"reference_quality": quality,
                       "degradations": [], "source": "synthetic"})
        )  # fmt: skip
    write_manifest(root / "manifest.jsonl", records)
    return root


def test_training_with_real_music_and_the_protocol_end_to_end(music, corpus, tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model:\n  kind: embedded\n  window_seconds: 2.0\n  cnn_channels: [8, 8]\n"
        "  cnn_strides: [[4, 4], [4, 4]]\n  embed_dim: 16\n  head_hidden: 8\n  level_norm: rms\n"
        "epochs: 2\nbatch_size: 4\nwarmup_steps: 1\nreal_workers: 1\nreal_valid_every: 3\n"
        f"real_sources: ['{music / 'band-a'}']\nholdout_sources: ['{music / 'band-b'}']\n"
        "holdout_families: [hum]\nreal_excerpts_per_file: 2\nreal_versions: 3\ngroup_size: 2\n"
        "centred_weight: 0.5\ngain_augment_db: 6.0\nreal_refresh_epochs: 1\n"
        "real_min_kbps_per_channel: 1.0\nkind_weight: 0.5\nreal_mix_share: 0.5\n"
        "real_speed_range: 0.1\nreal_fresh_positions: true\nrank_only_kinds: [bandpass]\n"
    )
    out = tmp_path / "run"
    data = f"corpus:{corpus / 'manifest.jsonl'}"
    args = ["mos", "train", "--config", str(config), "--data", data, "--out", str(out)]
    assert main([*args, "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["real_train_excerpts"] + summary["real_valid_excerpts"] == 8
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and {"srcc", "within_srcc", "clean_mean"} <= set(log[0]["valid_real"])
    saved = json.loads((out / "model" / "train_config.json").read_text())
    assert saved["holdout_families"] == ["hum"] and saved["centred_weight"] == 0.5
    assert saved["gain_augment_db"] == 6.0 and saved["model"]["level_norm"] == "rms"
    assert saved["real_refresh_epochs"] == 1 and summary["real_skipped"] == []
    assert saved["holdout_sources"] == [str(music / "band-b")]
    assert saved["kind_weight"] == 0.5 and saved["real_fresh_positions"]
    assert saved["rank_only_kinds"] == ["bandpass"]
    kinds = [k for k in KINDS if k != "hum"]
    assert load_mos_model(out / "model").config.kind_outputs == len(kinds)

    report = tmp_path / "protocol.json"
    args = ["mos", "eval", "--model", str(out / "model"), "--protocol", "--workers", "1"]
    assert main([*args, "--data", data, "--split", "valid", "--out", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "held-out families: within-kind SRCC" in printed and "hum" in printed
    result = json.loads(report.read_text())
    protocol = result["protocol"]
    assert protocol["clean"]["count"] == 3 and protocol["skipped"] == []
    assert protocol["settings"]["min_kbps_per_channel"] == 1.0  # as the model was trained
    assert main([*args, "--min-kbps-per-channel", "-1"]) == 2
    assert "--min-kbps-per-channel must be >= 0" in capsys.readouterr().err
    assert any("broken.ogg" in line for line in protocol["unreadable"])
    assert protocol["kinds"]["hum"]["held_out"] and not protocol["kinds"]["bandpass"]["held_out"]
    assert set(protocol["kinds"]["hum"]["mean_by_severity"]) == {"0.2", "0.4", "0.6", "0.8", "1.0"}
    assert result["omq"]["count"] == 4
    assert np.isfinite(protocol["summary"]["clean_mean"])

    # Clips made once score several models; a score falling with severity ranks perfectly.
    settings = ProtocolSettings(**{**protocol["settings"], "severities": (0.2, 0.4, 0.6, 0.8, 1.0)})
    model = load_mos_model(out / "model")
    clips = make_protocol_clips(settings, model.config.sample_rate, model.config.window_seconds)
    again = run_protocol(model, settings, clips=clips)
    assert again["summary"] == pytest.approx(protocol["summary"])
    ideal = [5.0] * len(clips.clean) + [5.0 - 4 * key[1] for key in clips.degraded]
    perfect = score_protocol(clips, ideal, settings)["summary"]
    assert perfect["heldout_families_srcc"] == pytest.approx(1.0)
    assert perfect["trained_families_within_srcc"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="scores for"):
        score_protocol(clips, ideal[:-1], settings)

    # Excerpts longer than the window, as the clips a user labels; never shorter.
    longer = dataclasses.replace(settings, excerpt_seconds=3.0)
    rate = model.config.sample_rate
    long_clips = make_protocol_clips(longer, rate, model.config.window_seconds)
    assert {len(wave) for wave in long_clips.clean} == {3 * rate}
    assert {len(wave) for wave in long_clips.degraded.values()} == {3 * rate}
    assert main([*args, "--excerpt-seconds", "1.5"]) == 2
    assert "--excerpt-seconds 1.5 is shorter than the model's 2 s window" in capsys.readouterr().err


def test_eval_needs_data_or_protocol(capsys):
    assert main(["mos", "eval", "--model", "x"]) == 2
    assert "give --data, --protocol or both" in capsys.readouterr().err


def test_protocol_settings_take_the_models_recorded_holdouts_unless_given(tmp_path):
    recorded = {"holdout_sources": ["src-a"], "holdout_families": ["opus", "eq_tilt"],
                "real_min_kbps_per_channel": 48}  # fmt: skip
    (tmp_path / "train_config.json").write_text(json.dumps(recorded))
    settings = settings_for_model(tmp_path, workers=1)
    assert settings.sources == ("src-a",) and settings.holdout_families == ("opus", "eq_tilt")
    assert settings.min_kbps_per_channel == 48 and settings.workers == 1
    given = settings_for_model(tmp_path, ["src-b"], [], 0.0, excerpts_per_file=2)
    assert given.sources == ("src-b",) and given.holdout_families == ()
    assert given.min_kbps_per_channel == 0.0 and given.excerpts_per_file == 2
    with pytest.raises(ConfigError, match="no held-out sources"):
        settings_for_model(tmp_path / "missing")
