"""Caption refinement (eqs. 8-10) with a scorer and a captioner whose answers are known."""

import numpy as np
import pytest
import soundfile as sf

from captioning.base import Captioner, ClapScorer
from captioning.merge import RuleMerger, clean_answer, split_tags
from captioning.refine import RefineSettings, parse_threshold, refine_manifest
from qamdt.errors import ConfigError
from qamdt.manifest import ClipRecord, read_manifest, write_manifest

SR = 8000
# Every clip's audio embeds to angle 0; a text's angle sets its cosine with the audio.
ANGLES = {
    "a baroque chorale for strings": 0.2,
    "baroque, chorale, strings": -0.2,
    "strings, harpsichord": 0.9,
    "speech, car": 1.4,
    "noise words": 1.5,
}


class AngleClap(ClapScorer):
    sample_rate = SR

    def embed_audio(self, audio, sample_rates, batch_size=8):
        return np.tile([1.0, 0.0], (len(audio), 1))

    def embed_text(self, texts, batch_size=32):
        angles = np.array([ANGLES[t] for t in texts])
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)

    def save_pretrained(self, directory):
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, path):
        raise NotImplementedError


class LevelCaptioner(Captioner):
    """Captions clip k (whose amplitude is 0.1 * (k + 1)) with CAPTIONS[k]."""

    sample_rate = SR

    def __init__(self, captions):
        self.captions = captions
        self.calls = 0

    def caption(self, audio, sample_rates, batch_size=8):
        self.calls += len(audio)
        return [self.captions[round(np.abs(w).max() * 10) - 1] for w in audio]

    def save_pretrained(self, directory):
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, path):
        raise NotImplementedError


# (original caption, generated caption, expected branch)
CASES = [
    ("baroque, chorale, strings", "a baroque chorale for strings", "generated"),  # agree
    ("strings, harpsichord", "a baroque chorale for strings", "merged"),  # eq. 10
    ("a baroque chorale for strings", "noise words", "original"),  # eq. 8 filters generated
    ("speech, car", "a baroque chorale for strings", "generated"),  # eq. 9 drops original
    (None, "a baroque chorale for strings", "generated"),  # missing original
    ("speech, car", "noise words", "none"),  # nothing usable
]
SETTINGS = RefineSettings(rho1=0.5, rho2=0.5, rho3=0.9)


@pytest.fixture
def manifest(tmp_path):
    records = []
    for k, (original, _, _) in enumerate(CASES):
        path = tmp_path / f"clip{k}.wav"
        sf.write(path, np.full(SR, 0.1 * (k + 1), dtype=np.float32), SR)
        records.append(
            ClipRecord(id=f"clip{k}", audio=path.name, original_caption=original, duration=1.0)
        )
    write_manifest(tmp_path / "manifest.jsonl", records)
    return tmp_path / "manifest.jsonl"


def test_each_branch_of_eqs_8_to_10(manifest):
    captioner = LevelCaptioner([generated for _, generated, _ in CASES])
    summary = refine_manifest(manifest, AngleClap(), captioner, settings=SETTINGS, progress=False)
    rows = read_manifest(manifest)
    for row, (_, generated, branch) in zip(rows, CASES, strict=True):
        assert row.generated_caption == generated
        assert row.meta["refine"]["branch"] == branch, row.id
        assert row.caption_source == branch
        assert row.clap["generated_audio"] == pytest.approx(np.cos(ANGLES[generated]), abs=1e-4)
    assert rows[1].final_caption == "a baroque chorale for strings, harpsichord."
    assert rows[2].final_caption == "a baroque chorale for strings"
    assert rows[5].final_caption is None
    assert summary["branches"] == {"merged": 1, "generated": 3, "original": 1, "none": 1}
    assert summary["generated_filtered_share"] == pytest.approx(2 / 6, abs=1e-4)
    assert summary["original_dropped_share"] == pytest.approx(2 / 5, abs=1e-4)
    assert summary["merged_share"] == pytest.approx(1 / 6, abs=1e-4)


def test_rerun_reuses_scores_and_captions(manifest):
    captioner = LevelCaptioner([generated for _, generated, _ in CASES])
    refine_manifest(manifest, AngleClap(), captioner, settings=SETTINGS, progress=False)
    first = manifest.read_text()
    calls = captioner.calls
    refine_manifest(manifest, AngleClap(), captioner, settings=SETTINGS, progress=False)
    assert captioner.calls == calls
    assert manifest.read_text() == first


def test_percentile_thresholds(manifest):
    captioner = LevelCaptioner([generated for _, generated, _ in CASES])
    settings = RefineSettings(rho1="p50", rho2=0.5, rho3=0.9)
    summary = refine_manifest(manifest, AngleClap(), captioner, settings=settings, progress=False)
    scores = sorted(np.cos(ANGLES[g]) for _, g, _ in CASES)
    assert summary["thresholds"]["rho1"] == pytest.approx(np.percentile(scores, 50), abs=1e-4)


def test_unreadable_audio_is_recorded_and_the_rest_refined(manifest):
    records = read_manifest(manifest)
    (manifest.parent / "broken.wav").write_bytes(b"RIFF junk")
    records.append(ClipRecord(id="broken", audio="broken.wav", original_caption="speech, car"))
    write_manifest(manifest, records)
    captioner = LevelCaptioner([generated for _, generated, _ in CASES])
    summary = refine_manifest(manifest, AngleClap(), captioner, settings=SETTINGS, progress=False)
    rows = {r.id: r for r in read_manifest(manifest)}
    assert "broken.wav" in rows["broken"].errors["captions"]
    assert rows["broken"].final_caption is None and summary["failed"] == 1
    assert rows["clip1"].caption_source == "merged"


def test_rule_merger_adds_only_missing_tags_and_no_new_words():
    merged = RuleMerger().merge(
        ["Baroque, chorale, string quartet, 92 bpm", "speech"],
        ["A baroque chorale played by a string quartet.", "Speech and piano."],
    )
    assert merged == ["A baroque chorale played by a string quartet, 92 bpm.", "Speech and piano."]
    words = set("a baroque chorale played by string quartet 92 bpm".split())
    assert set(merged[0].lower().replace(",", "").replace(".", "").split()) <= words


def test_split_tags_and_llm_answer_cleaning():
    assert split_tags("rock, guitar; Rock , drums.") == ["rock", "guitar", "Rock", "drums"]
    assert clean_answer('  Merged caption: "A calm piano piece."\n\nExtra notes') == (
        "A calm piano piece."
    )
    assert clean_answer("   \n\n  ") == ""


def test_llm_merger_runs_a_local_model(tmp_path):
    """A tiny random causal LM stands in for the instruct model: the code path, not quality."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    from captioning.merge import LlmMerger

    vocab = {c: i for i, c in enumerate(["<|endoftext|>", *"abcdefghijklmnopqrstuvwxyz ,.\"'"])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer = GPT2TokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    tokenizer.save_pretrained(tmp_path)
    config = GPT2Config(vocab_size=len(vocab), n_embd=16, n_layer=1, n_head=2, n_positions=512)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    merger = LlmMerger(tmp_path, max_new_tokens=5, batch_size=2)
    out = merger.merge(["strings", "piano"], ["a chorale", "a waltz"])
    assert len(out) == 2 and all(isinstance(t, str) and t for t in out)
    assert out == LlmMerger(tmp_path, max_new_tokens=5).merge(["strings", "piano"],
                                                             ["a chorale", "a waltz"])  # fmt: skip


def test_threshold_parsing():
    assert parse_threshold(0.1) == ("absolute", 0.1)
    assert parse_threshold("p8.9") == ("percentile", 8.9)
    with pytest.raises(ConfigError, match="rho1"):
        RefineSettings(rho1="top-ten")


def test_evaluation_scores_each_caption_set_against_the_truth():
    from captioning.evaluate import evaluate_captions, format_evaluation

    tags = {
        "style": "baroque",
        "instruments": ["violin", "cello"],
        "tempo": "andante",
        "tempo_class": "medium",
        "bpm": 92,
        "mode": "minor",
        "meter": "3/4",
    }
    truth = "A baroque piece for violin and cello, andante at 92 BPM, in A minor and 3/4 time."
    rows = [
        ClipRecord(
            id="a",
            audio="a.wav",
            original_caption="speech, car",
            generated_caption=truth,
            final_caption=truth,
            clap={"original_audio": 0.05, "generated_audio": 0.4},
            meta={"tags": tags, "caption_kind": "wrong", "refine": {"rho2": 0.1}},
        ),
        ClipRecord(
            id="b",
            audio="b.wav",
            original_caption=truth,
            generated_caption="A piece for violin.",
            final_caption=truth,
            clap={"original_audio": 0.3, "generated_audio": 0.2},
            meta={"tags": tags, "caption_kind": "sentence", "refine": {"rho2": 0.1}},
        ),
    ]
    result = evaluate_captions(rows)
    f1 = {name: scores["overall"]["f1"] for name, scores in result["tag_f1"].items()}
    assert f1["D_merge (final)"] == pytest.approx(1.0)
    assert f1["D_o (original)"] < f1["D_merge (final)"]
    assert result["eq9"] == {
        "wrong_captions": 1,
        "wrong_removed_share": 1.0,
        "correct_captions": 1,
        "correct_removed_share": 0.0,
    }
    assert "D_g (generated)" in format_evaluation({"split": "test", **result})
