import importlib.util
import json
import os
import pdb
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.stats import entropy
from tiny_clap import TINY_CLAP

from captioning.embedded_captioner import EmbeddedCaptioner
from captioning.embedded_clap import EmbeddedClapScorer
from captioning.tagger_model import EmbeddedCaptionerConfig
from mos_predictor.models import build_mos_model
from qamdt.audio_io import prepare_clips
from qamdt.cli.evaluate_commands import format_table
from qamdt.cli.main import main
from qamdt.errors import ConfigError, QamdtError
from qamdt.evaluation import audioldm_eval_backend as aeval
from qamdt.evaluation.embedders import ClapAudioEmbedder, TaggerClassifier
from qamdt.evaluation.evaluate import _clap_scores, derangement, evaluate_generated
from qamdt.evaluation.inputs import parse_reference_filter, read_generated, read_reference
from qamdt.evaluation.metrics import (
    embedding_statistics,
    frechet_distance,
    frechet_distance_of,
    frechet_jackknife,
    inception_score,
    kl_divergence_paired,
)
from qamdt.evaluation.report import write_report
from qamdt.manifest import ClipRecord, write_manifest

SR = 22050
TINY_CAPTIONER = {
    "vocab": {
        "instruments": ["flute", "violin", "cello"],
        "ensemble": ["solo {}", "string quartet", "{} and {} in unison"],
        "tempo": ["slow", "fast"],
        "style": ["folk", "baroque"],
    },
    "cnn_channels": [4, 8],
    "cnn_strides": [[4, 2], [4, 2]],
    "embed_dim": 8,
    "tempo_dim": 4,
    "window_seconds": 0.5,
    "tempo_lags_seconds": 0.25,
}
TINY_MOS = {"kind": "embedded", "window_seconds": 0.5, "cnn_channels": [4, 8], "embed_dim": 8}
TINY_MOS["cnn_strides"] = [[4, 2], [4, 2]]
XSS = "<script>alert(1)</script> a folk tune"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    clap = EmbeddedClapScorer(TINY_CLAP)
    captioner = EmbeddedCaptioner(EmbeddedCaptionerConfig(**TINY_CAPTIONER))
    mos = build_mos_model(TINY_MOS).eval()
    return mos, clap, captioner


def tone(freq, seconds=0.6, rate=SR, seed=0, noise=0.01):
    t = np.arange(int(seconds * rate)) / rate
    hiss = np.random.default_rng(seed).normal(0, noise, t.shape)
    return (0.4 * np.sin(2 * np.pi * freq * t) + hiss).astype(np.float32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Generated clips at levels 1 and 5 (3 each), a corrupt file, a reference folder."""
    root = tmp_path_factory.mktemp("eval")
    gen, ref = root / "generated", root / "reference"
    gen.mkdir()
    ref.mkdir()
    prompts = ["a calm flute solo", "a fast string quartet", XSS]
    for level, noise in ((1, 0.2), (5, 0.01)):
        for i, prompt in enumerate(prompts):
            name = f"p{i}_q{level}"
            sf.write(gen / f"{name}.wav", tone(220 * (i + 1), seed=i, noise=noise), SR)
            sidecar = {"prompt": prompt, "quality_level": level, "seed": i, "reference_id": f"r{i}"}
            (gen / f"{name}.json").write_text(json.dumps(sidecar))
    (gen / "broken.wav").write_bytes(b"RIFF\x00\x00not really audio")
    (gen / "broken.json").write_text(json.dumps({"prompt": "x", "quality_level": 3, "seed": 0}))
    sf.write(gen / "orphan.wav", tone(300), SR)
    for i in range(4):
        sf.write(ref / f"r{i}.wav", tone(220 * (i + 1), seconds=0.8, seed=10 + i), 16000)
    return gen, ref


# ------------------------------------------------------------------------------ metrics


def test_frechet_identical_sets_is_zero():
    emb = np.random.default_rng(0).normal(size=(40, 5))
    assert abs(frechet_distance_of(emb, emb)) < 1e-8


def test_frechet_closed_form_diagonal_gaussians():
    mu1, mu2 = np.zeros(2), np.array([1.0, 2.0])
    s1, s2 = np.diag([1.0, 4.0]), np.diag([4.0, 9.0])
    # |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2 = 5 + (1 - 2)^2 + (2 - 3)^2
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(7.0)


def test_frechet_matches_symmetric_form_for_random_covariances():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    s1, s2 = a @ a.T + 0.1 * np.eye(4), b @ b.T + 0.1 * np.eye(4)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    vals, vecs = np.linalg.eigh(s1)
    root1 = vecs @ np.diag(np.sqrt(vals)) @ vecs.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.sum(np.sqrt(inner))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


def test_frechet_shift_and_rank_deficient_sets():
    emb = np.random.default_rng(2).normal(size=(30, 3))
    shift = np.array([1.0, -2.0, 0.5])
    assert frechet_distance_of(emb, emb + shift) == pytest.approx(np.sum(shift**2), abs=1e-6)
    few = np.random.default_rng(3).normal(size=(3, 8))  # covariance of rank 2 in 8-D
    value = frechet_distance_of(few, few[::-1] + 0.1)
    assert np.isfinite(value) and value > -1e-6


def test_frechet_jackknife_hand_computed():
    rng = np.random.default_rng(3)
    clips = [rng.normal(size=(4, 2)) + i for i in range(4)]
    reference = rng.normal(size=(30, 2))
    value, error = frechet_jackknife(clips, reference)
    assert value == pytest.approx(frechet_distance_of(np.concatenate(clips), reference))
    left_out = [frechet_distance_of(np.concatenate(clips[:i] + clips[i + 1 :]), reference)
                for i in range(4)]  # fmt: skip
    assert error == pytest.approx(np.sqrt(3 / 4 * np.sum((left_out - np.mean(left_out)) ** 2)))
    same = [clips[0]] * 3  # every draw is the same set
    assert frechet_jackknife(same, reference)[1] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="at least 3 clips"):
        frechet_jackknife(clips[:2], reference)


def test_frechet_errors_and_statistics():
    emb = np.random.default_rng(4).normal(size=(6, 3))
    mu, sigma = embedding_statistics(emb)
    np.testing.assert_allclose(mu, emb.mean(0))
    np.testing.assert_allclose(sigma, np.cov(emb, rowvar=False))
    with pytest.raises(ValueError, match="at least 2"):
        embedding_statistics(emb[:1])
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_kl_softmax_hand_computed_and_scipy():
    p = np.array([[0.5, 0.5], [0.9, 0.1]])
    q = np.array([[0.25, 0.75], [0.5, 0.5]])
    first = 0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)
    second = 0.9 * np.log(0.9 / 0.5) + 0.1 * np.log(0.1 / 0.5)
    assert kl_divergence_paired(p, q, eps=0.0) == pytest.approx((first + second) / 2)
    scipy_mean = np.mean([entropy(p[i], q[i]) for i in range(2)])
    assert kl_divergence_paired(p, q, eps=0.0) == pytest.approx(scipy_mean)
    assert abs(kl_divergence_paired(p, p)) < 1e-5


def test_kl_matches_audioldm_eval_torch_formulas():
    rng = np.random.default_rng(5)
    logits_gen, logits_ref = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    gen, ref = torch.tensor(logits_gen), torch.tensor(logits_ref)
    eps = 1e-6
    softmax = torch.nn.functional.kl_div(
        (gen.softmax(dim=1) + eps).log(), ref.softmax(dim=1), reduction="sum"
    ) / len(gen)
    sigmoid = torch.nn.functional.kl_div(
        (gen.sigmoid() + eps).log(), ref.sigmoid(), reduction="sum"
    ) / len(gen)
    ours = kl_divergence_paired(ref.softmax(1).numpy(), gen.softmax(1).numpy())
    assert ours == pytest.approx(float(softmax), rel=1e-9)
    ours = kl_divergence_paired(ref.sigmoid().numpy(), gen.sigmoid().numpy(), kind="sigmoid")
    assert ours == pytest.approx(float(sigmoid), rel=1e-9)


def test_kl_bernoulli_form():
    p, q = np.array([[0.8, 0.1]]), np.array([[0.5, 0.3]])
    per_class = [
        0.8 * np.log(0.8 / 0.5) + 0.2 * np.log(0.2 / 0.5),
        0.1 * np.log(0.1 / 0.3) + 0.9 * np.log(0.9 / 0.7),
    ]
    assert kl_divergence_paired(p, q, "bernoulli", eps=0.0) == pytest.approx(np.mean(per_class))
    rand = np.random.default_rng(6).uniform(0.01, 0.99, size=(2, 10, 4))
    assert kl_divergence_paired(rand[0], rand[1], "bernoulli") >= 0
    assert abs(kl_divergence_paired(rand[0], rand[0], "bernoulli")) < 1e-5
    with pytest.raises(ValueError, match="kind"):
        kl_divergence_paired(p, q, "cosine")
    with pytest.raises(ValueError, match="same shape"):
        kl_divergence_paired(p, q[:, :1])


def test_inception_score_bounds_and_torch_reference():
    uniform = np.full((20, 4), 0.25)
    assert inception_score(uniform, splits=5) == pytest.approx((1.0, 0.0))
    one_hot = np.eye(4)
    mean, std = inception_score(one_hot, splits=1)
    assert mean == pytest.approx(4.0) and std == 0.0
    logits = torch.tensor(np.random.default_rng(7).normal(size=(23, 6)) * 3)
    perm = np.random.RandomState(2020).permutation(23)
    p, log_p = logits[perm].softmax(1), logits[perm].log_softmax(1)
    scores = []
    for i in range(3):
        chunk, log_chunk = (
            p[i * 23 // 3 : (i + 1) * 23 // 3],
            log_p[i * 23 // 3 : (i + 1) * 23 // 3],
        )
        kl = chunk * (log_chunk - chunk.mean(0, keepdim=True).log())
        scores.append(kl.sum(1).mean().exp().item())
    ours = inception_score(logits.softmax(1).numpy(), splits=3)
    assert ours == pytest.approx((np.mean(scores), np.std(scores)), rel=1e-9)
    with pytest.raises(ValueError, match="splits"):
        inception_score(uniform, splits=21)
    with pytest.raises(ValueError, match="distribution"):
        inception_score(np.ones((3, 2)))


def test_derangement_moves_everything_and_is_seeded():
    for n in (2, 3, 7):
        order = derangement(n, seed=3)
        assert sorted(order) == list(range(n)) and all(order != np.arange(n))
    assert list(derangement(6, 1)) == list(derangement(6, 1))
    with pytest.raises(ValueError):
        derangement(1, 0)


class _FixedTextClap:
    """Text embeddings from a table, for the CLAP control's arithmetic."""

    def __init__(self, table):
        self.table = table

    def embed_text(self, texts):
        return np.asarray([self.table[t] for t in texts], dtype=np.float32)


def test_clap_shuffled_control_averages_derangements():
    table = {"a": [1.0, 0.0, 0.0], "b": [0.0, 1.0, 0.0], "c": [0.0, 0.0, 1.0]}
    clips = [type("Clip", (), {"prompt": p})() for p in ("a", "b", "a")]
    audio = np.asarray([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.5, 0.5, 0.0]])
    scores = _clap_scores(_FixedTextClap(table), clips, audio, seed=0, notes=[])
    np.testing.assert_allclose(scores["matched"], [0.9, 0.8, 0.5])
    # Two distinct prompts have one derangement: the swap.
    np.testing.assert_allclose(scores["shuffled"], [0.1, 0.2, 0.5])
    # With three, the derangements are the two cycles; each clip's control lies between
    # its scores against the two other prompts.
    clips.append(type("Clip", (), {"prompt": "c"})())
    audio = np.vstack([audio, [0.3, 0.3, 0.4]])
    scores = _clap_scores(_FixedTextClap(table), clips, audio, seed=0, notes=[])
    others = {0: [0.1, 0.0], 1: [0.2, 0.0], 2: [0.5, 0.0], 3: [0.3, 0.3]}
    for row, values in others.items():
        assert min(values) - 1e-9 <= scores["shuffled"][row] <= max(values) + 1e-9
    notes = []
    single = _clap_scores(_FixedTextClap(table), clips[:1], audio[:1], seed=0, notes=notes)
    assert "shuffled" not in single and "skipped" in notes[0]


# ---------------------------------------------------------------------------- embedders


def test_embedders_shapes(models):
    _, clap, captioner = models
    waves, rates = [tone(220), tone(440, seconds=1.3)], [SR, 16000]
    pooled = ClapAudioEmbedder(clap, features="pooled").embed(waves, rates)
    assert pooled.shape == (2, 2 * TINY_CLAP["audio_width"]) and "not VGGish" in (
        ClapAudioEmbedder(clap).description
    )
    projected = ClapAudioEmbedder(clap, features="projected").embed(waves, rates)
    np.testing.assert_allclose(projected, clap.embed_audio(waves, rates), atol=1e-6)
    # The default takes every frame; a one-window clip's pooled vector is their mean and
    # (population) standard deviation.
    frames = ClapAudioEmbedder(clap).samples(waves, rates)
    assert ClapAudioEmbedder(clap).features == "frames"
    assert [f.shape[1] for f in frames] == [TINY_CLAP["audio_width"]] * 2
    assert frames[1].shape[0] > frames[0].shape[0] > 1
    short = [tone(330, seconds=0.45)]  # under one 0.5 s window: encoded whole
    (window,) = clap.mel_windows(clap.log_mel(prepare_clips(short, SR, clap.sample_rate)[0]))
    (short_frames,) = ClapAudioEmbedder(clap).samples(short, SR)
    expected = np.concatenate([short_frames.mean(0), short_frames.std(0)])
    short_pooled = ClapAudioEmbedder(clap, features="pooled").embed(short, SR)[0]
    np.testing.assert_allclose(short_pooled, expected, rtol=1e-4, atol=1e-5)
    per_clip = ClapAudioEmbedder(clap, features="pooled").samples(waves, rates)
    assert [p.shape for p in per_clip] == [(1, pooled.shape[1])] * 2
    with pytest.raises(ConfigError, match="no vector per clip"):
        ClapAudioEmbedder(clap).embed(waves, rates)
    with pytest.raises(ConfigError, match="Frechet features must be one of"):
        ClapAudioEmbedder(clap, features="vggish")
    tagger = TaggerClassifier(captioner)
    assert tagger.class_head == "ensemble" and "not PANNs" in tagger.description
    per_head = tagger.head_probabilities(waves, rates)
    np.testing.assert_allclose(per_head["ensemble"].sum(1), 1.0)
    assert per_head["instruments"].shape == (2, 3)
    assert tagger.probabilities(waves, rates).shape == (2, 3 + 3 + 2 + 2)
    with pytest.raises(ConfigError, match="embedded captioner"):
        TaggerClassifier(object())
    with pytest.raises(ConfigError, match="single-label"):
        TaggerClassifier(captioner, head="instruments")


# ------------------------------------------------------------------------------ inputs


def test_read_generated_and_reference(dataset, tmp_path):
    gen, ref = dataset
    clips, failures = read_generated(gen)
    assert len(clips) == 7 and {c.level for c in clips} == {1, 3, 5}
    assert [f["file"] for f in failures] == [str(gen / "orphan.wav")]
    rows = [
        ClipRecord(id="a", audio="a.wav", split="test", meta={"degradations": []}),
        ClipRecord(id="b", audio="b.wav", split="test", meta={"degradations": [{"type": "x"}]}),
        ClipRecord(id="c", audio="c.wav", split="train", quality_level=5),
        ClipRecord(id="d", audio="d.wav", split="test", quality_level=4),
    ]
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, rows)
    assert [c.key for c in read_reference(manifest)[0]] == ["a", "b", "d"]
    assert [c.key for c in read_reference(manifest, "test", "clean")[0]] == ["a"]
    assert [c.key for c in read_reference(manifest, "all", "quality>=4")[0]] == ["c", "d"]
    with pytest.raises(ConfigError, match="no reference clips"):
        read_reference(manifest, "valid")
    with pytest.raises(ConfigError, match="needs a manifest"):
        read_reference(ref, reference_filter="clean")
    with pytest.raises(ConfigError, match="quality>=K"):
        parse_reference_filter("best")


# -------------------------------------------------------------------------- end to end


def test_evaluate_end_to_end_and_report(dataset, models, tmp_path):
    gen, ref = dataset
    mos, clap, captioner = models
    out = tmp_path / "report"
    results = evaluate_generated(
        gen, ref, mos, clap, captioner, out=out, progress=False, examples_per_level=1
    )
    level_5 = sorted(gen.glob("p*_q5.wav"))
    assert results["backend"].startswith("embedded") and "not VGGish/PANNs" in results["backend"]
    failed = sorted(os.path.basename(f["file"]) for f in results["failures"])
    assert failed == ["broken.wav", "orphan.wav"]
    assert results["generated"]["count"] == 6 and results["reference"]["count"] == 4
    sweep = results["quality_sweep"]
    assert [s["level"] for s in sweep] == [1, 5] and [s["count"] for s in sweep] == [3, 3]
    for group in [results["overall"], *sweep]:
        for key in ("pmos_mean", "frechet", "frechet_se", "kl", "kl_sigmoid", "is", "clap"):
            assert isinstance(group[key], float), key
        assert group["kl_pairs"] == group["count"]
    assert 1.0 <= results["overall"]["is"] <= 3.0
    clap_result = results["clap"]
    assert clap_result["matched"] != clap_result["shuffled"]
    assert results["reference"]["pmos_mean"] is not None
    assert [e["level"] for e in results["examples"]] == [1, 5]
    # The Frechet distance pools every frame of a set's clips.
    embedder = ClapAudioEmbedder(clap)
    gen_frames = embedder.samples(
        *zip(*[sf.read(f, dtype="float32") for f in level_5], strict=True)
    )
    ref_frames = embedder.samples(
        *zip(*[sf.read(f, dtype="float32") for f in sorted(ref.glob("*.wav"))], strict=True)
    )
    expected = frechet_distance_of(np.concatenate(gen_frames), np.concatenate(ref_frames))
    assert sweep[1]["frechet"] == pytest.approx(expected, rel=1e-6)

    saved = json.loads((out / "report.json").read_text())
    assert saved["quality_sweep"][1]["count"] == 3
    page = (out / "report.html").read_text()
    assert page.count("<audio controls") == 2 and "<script" not in page
    assert (out / "sweep_pmos_mean.png").is_file() and (out / "sweep_frechet.png").is_file()
    assert 'src="sweep_frechet.png"' in page
    assert (out / "examples").is_dir() and len(list((out / "examples").glob("*.png"))) == 2
    assert "broken.wav" in page and "Quality sweep" in page


def test_report_escapes_and_renders_extra_sections(dataset, tmp_path):
    gen, _ = dataset
    results = {
        "backend": "test <b>backend</b>",
        "overall": {"count": 2, "pmos_mean": float("nan")},
        "quality_sweep": [
            {"level": 1, "count": 1, "pmos_mean": 2.5, "frechet": 3.0},
            {"level": 2, "count": 1, "pmos_mean": 3.5, "frechet": 2.0},
        ],
        "baselines": {"MDT <no quality>": {"pmos_mean": 3.0, "frechet": 2.5}},
        "stage_seconds": {"generate": 12.5},
        "extra_table": [{"name": XSS, "value": 1}],
        "failures": [],
    }
    examples = [{"name": "p2_q5", "level": 5, "prompt": XSS, "audio": str(gen / "p2_q5.wav")}]
    path = write_report(results, tmp_path, examples)
    page = path.read_text()
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "MDT &lt;no quality&gt;" in page and "Stage seconds" in page and "Extra table" in page
    assert '<audio controls preload="none" src="examples/000_p2_q5.wav">' in page
    assert json.loads((tmp_path / "report.json").read_text())["overall"]["pmos_mean"] is None


def test_cli_evaluate(dataset, models, tmp_path, capsys):
    gen, ref = dataset
    mos, clap, _ = models
    clap.save_pretrained(tmp_path / "clap")
    mos.save_pretrained(tmp_path / "mos")
    code = main(
        [
            "evaluate",
            "--generated", str(gen),
            "--reference", str(ref),
            "--clap", str(tmp_path / "clap"),
            "--mos", str(tmp_path / "mos"),
            "--out", str(tmp_path / "out"),
            "--quiet",
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "CLAP-shuf" in printed and str(tmp_path / "out" / "report.html") in printed
    assert (tmp_path / "out" / "report.html").is_file()
    table = format_table(json.loads((tmp_path / "out" / "report.json").read_text()))
    assert table.splitlines()[1].split()[0] == "all"


# ------------------------------------------------------------------------ audioldm_eval


def _fake_checkpoints(root):
    (root / "hub" / aeval.VGGISH_REPO_DIR).mkdir(parents=True)
    (root / "hub" / aeval.VGGISH_REPO_DIR / "hubconf.py").write_text("")
    (root / "hub" / "checkpoints").mkdir()
    for name in aeval.VGGISH_FILES:
        (root / "hub" / "checkpoints" / name).write_bytes(b"x")
    (root / aeval.PANNS_FILES[16000]).write_bytes(b"x")
    return root


def test_audioldm_eval_checkpoints_missing(tmp_path, monkeypatch):
    monkeypatch.delenv(aeval.ENV_VAR, raising=False)
    with pytest.raises(ConfigError, match="--audioldm-eval-ckpt"):
        aeval.find_checkpoints(None)
    (tmp_path / "hub").mkdir()
    with pytest.raises(ConfigError, match="Cnn14_16k_mAP=0.438.pth") as caught:
        aeval.find_checkpoints(tmp_path)
    assert "vggish-10086976.pth" in str(caught.value)
    monkeypatch.setenv(aeval.ENV_VAR, str(tmp_path))
    with pytest.raises(ConfigError, match="missing"):
        aeval.AudioldmEvalBackend()
    found = aeval.find_checkpoints(_fake_checkpoints(tmp_path / "full"))
    assert found.hub_dir == tmp_path / "full" / "hub"


def test_audioldm_eval_not_installed(tmp_path, monkeypatch, dataset):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "audioldm_eval" else real(name, *a),
    )
    ckpt = _fake_checkpoints(tmp_path)
    with pytest.raises(ConfigError, match="not installed"):
        aeval.AudioldmEvalBackend(ckpt)
    gen, ref = dataset
    with pytest.raises(ConfigError, match="not installed"):
        evaluate_generated(gen, ref, backend="audioldm-eval", audioldm_eval_ckpt=ckpt)


def test_audioldm_eval_guards_refuse_downloads_and_debuggers(tmp_path):
    checkpoints = aeval.find_checkpoints(_fake_checkpoints(tmp_path / "ckpt"))
    work = tmp_path / "work"
    work.mkdir()
    cwd, home = os.getcwd(), os.environ.get("HOME")
    hub, set_trace = torch.hub.get_dir(), pdb.set_trace
    with aeval._offline_guards(checkpoints, work):
        assert os.getcwd() == str(work) and (work / "ckpt" / aeval.PANNS_FILES[32000]).exists()
        with pytest.raises(aeval.DebuggerDropError):
            import ipdb

            ipdb.set_trace()
        with pytest.raises(aeval.DebuggerDropError):
            pdb.set_trace()
        with pytest.raises(ConfigError, match="download"):
            torch.hub.download_url_to_file("https://example.invalid/x", str(work / "x"))
        with pytest.raises(ConfigError):
            os.system("true")
    assert os.getcwd() == cwd and os.environ.get("HOME") == home and torch.hub.get_dir() == hub
    assert "ipdb" not in sys.modules or sys.modules["ipdb"].__name__ == "ipdb"
    assert pdb.set_trace is set_trace


def test_evaluate_rejects_bad_inputs(tmp_path, dataset):
    gen, ref = dataset
    with pytest.raises(ConfigError, match="backend"):
        evaluate_generated(gen, ref, backend="vggish")
    with pytest.raises(QamdtError, match="not found"):
        evaluate_generated(tmp_path / "missing", ref)
    (tmp_path / "empty").mkdir()
    with pytest.raises(QamdtError, match="no generated audio"):
        evaluate_generated(tmp_path / "empty", ref)
