import json
import math

import pytest

from qamdt.cli.generate_commands import FLAG_SETTINGS, explicit_settings
from qamdt.cli.main import build_parser
from qamdt.demo.settings import DemoSettings
from qamdt.errors import ConfigError, QamdtError
from qamdt.generation.folder import PipelineIndex
from qamdt.generation.settings import (
    DEFAULT_GUIDANCE_SCALE,
    SETTING_NAMES,
    GenerationSettings,
    SettingsError,
)
from qamdt.generation.sidecar import read_sidecar, write_sidecar


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"guidance_scale": math.nan}, "guidance_scale", "finite"),
        ({"guidance_scale": "3"}, "guidance_scale", "number"),
        ({"eta": -0.5}, "eta", ">= 0"),
        ({"guidance_interval": (900, 100)}, "guidance_interval", "low <= high"),
        ({"guidance_interval": (0, 1, 2)}, "guidance_interval", "(low, high)"),
        ({"guidance_interval": (-1, 100)}, "guidance_interval", "0 <= low"),
        ({"guidance_rescale": 1.5}, "guidance_rescale", "[0, 1]"),
        ({"quality_level": 7}, "quality_level", "1..5"),
        ({"quality_level": 0.5}, "quality_level", "null level"),
        ({"negative_quality_level": -1}, "negative_quality_level", "1..5"),
        ({"quality_level": True}, "quality_level", "number"),
        ({"num_inference_steps": 0}, "num_inference_steps", ">= 1"),
        ({"num_inference_steps": 2.5}, "num_inference_steps", "integer"),
        ({"num_waveforms_per_prompt": 0}, "num_waveforms_per_prompt", ">= 1"),
        ({"audio_length_in_s": math.inf}, "audio_length_in_s", "finite"),
        ({"audio_length_in_s": 0}, "audio_length_in_s", "> 0"),
        ({"audio_length_in_s": 1e6}, "audio_length_in_s", "at most 600"),
        ({"guidance": "cfg++"}, "guidance", "released"),
        ({"scheduler": "heun9"}, "scheduler", "dpmsolver++"),
        ({"seed": -3}, "seed", "non-negative"),
        ({"negative_prompt": 3}, "negative_prompt", "string"),
    ],
)
def test_bad_values_are_refused_naming_the_field(changes, field, words):
    with pytest.raises(SettingsError) as caught:
        GenerationSettings(**changes)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ") and words in str(caught.value)
    with pytest.raises(ConfigError, match=f"^my file: {field}: "):
        GenerationSettings.from_dict(changes, "my file")


def test_defaults_and_accepted_values():
    settings = GenerationSettings()
    assert settings.guidance_scale == DEFAULT_GUIDANCE_SCALE == 3.5
    assert (settings.guidance, settings.num_inference_steps, settings.eta) == ("quality", 200, 0)
    assert settings.quality_level == 5 and settings.seed is None
    ok = GenerationSettings(
        quality_level=None,
        negative_quality_level=0,
        guidance_interval=[0, 700],
        negative_prompt=["a", "b"],
        num_inference_steps=25.0,
    )
    assert ok.guidance_interval == (0, 700) and ok.negative_prompt == ("a", "b")
    assert ok.num_inference_steps == 25 and isinstance(ok.num_inference_steps, int)
    with pytest.raises(SettingsError, match="eta"):
        ok.replace(eta=-1)
    with pytest.raises(ConfigError, match=r"'guidance_scal' \(did you mean 'guidance_scale'\?\)"):
        GenerationSettings.from_dict({"guidance_scal": 2})
    with pytest.raises(ConfigError, match="num_steps"):
        ok.replace(num_steps=3)


def test_layers_resolve_explicit_over_pipeline_over_global():
    pipeline_defaults = {"guidance": "released", "num_inference_steps": 50, "eta": 1.0}
    resolved = GenerationSettings.resolve(pipeline_defaults, {"num_inference_steps": 8})
    assert (resolved.guidance, resolved.num_inference_steps, resolved.eta) == ("released", 8, 1.0)
    assert resolved.guidance_scale == DEFAULT_GUIDANCE_SCALE
    # A whole settings object is explicit in every field.
    whole = GenerationSettings(num_inference_steps=3)
    assert GenerationSettings.resolve(pipeline_defaults, whole) == whole
    assert GenerationSettings.resolve(pipeline_defaults, whole, {"eta": 0.5}).eta == 0.5
    with pytest.raises(ConfigError, match="unknown generation setting"):
        GenerationSettings.resolve({"steps": 3})


def test_sidecar_round_trip_and_old_sidecars(tmp_path):
    settings = GenerationSettings(
        quality_level=4.5,
        negative_prompt="low quality",
        guidance="negative-prompt",
        guidance_interval=(0.0, 800.0),
        num_inference_steps=7,
        eta=1.0,
        audio_length_in_s=2.5,
        seed=11,
    )
    path = tmp_path / "a.json"
    write_sidecar(path, settings, "a reel", "high quality, a reel", {"reference_id": "r1"})
    read = read_sidecar(path)
    assert read.settings == settings and read.prompt == "a reel"
    assert read.text == "high quality, a reel" and read.reference_id == "r1"
    raw = json.loads(path.read_text())
    assert raw["steps"] == raw["num_inference_steps"] == 7
    assert set(SETTING_NAMES) <= set(raw)
    with pytest.raises(ValueError, match="seed"):
        write_sidecar(path, settings, "x", extra={"seed": 3})

    old = tmp_path / "old.json"
    old.write_text(json.dumps({"prompt": "p", "quality_level": 3, "seed": 2, "steps": 9}))
    assert read_sidecar(old).settings == GenerationSettings(
        quality_level=3, seed=2, num_inference_steps=9
    )
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"prompt": "p", "quality_level": "high"}))
    with pytest.raises(QamdtError, match=r"bad.json: field 'quality_level' must be a number"):
        read_sidecar(bad)
    bad.write_text(json.dumps({"quality_level": 3}))
    with pytest.raises(QamdtError, match="field 'prompt' must be a string"):
        read_sidecar(bad)
    with pytest.raises(QamdtError, match="sidecar missing"):
        read_sidecar(tmp_path / "none.json")


def parse(*argv):
    return build_parser().parse_args(["generate", "p", "--model", "m", "--out", "o", *argv])


def test_command_line_flags_map_onto_settings():
    assert explicit_settings(parse()) == {}
    given = explicit_settings(
        parse(
            "--quality",
            "2",
            "--negative-quality",
            "0",
            "--negative-prompt",
            "noise",
            "--guidance",
            "released",
            "--cfg",
            "6",
            "--cfg-rescale",
            "0.5",
            "--cfg-interval",
            "0",
            "800",
            "--steps",
            "30",
            "--scheduler",
            "unipc",
            "--eta",
            "1",
            "--length",
            "4",
            "--num-waveforms",
            "2",
            "--seed",
            "9",
        )  # fmt: skip
    )
    assert given == {
        "quality_level": 2.0,
        "negative_quality_level": 0.0,
        "negative_prompt": "noise",
        "guidance": "released",
        "guidance_scale": 6.0,
        "guidance_rescale": 0.5,
        "guidance_interval": (0.0, 800.0),
        "num_inference_steps": 30,
        "scheduler": "unipc",
        "eta": 1.0,
        "audio_length_in_s": 4.0,
        "num_waveforms_per_prompt": 2,
        "seed": 9,
    }
    assert set(FLAG_SETTINGS.values()) == set(SETTING_NAMES)


def test_demo_sampling_section_builds_the_settings():
    demo = DemoSettings.full()
    settings = demo.generation_settings()
    assert settings == GenerationSettings(
        scheduler="ddim",
        num_inference_steps=25,
        eta=0.0,
        repaint_resamples=2,
        guidance_scale=8.0,
        guidance_rescale=0.7,
        guidance_interval=(0.0, 700.0),
        audio_length_in_s=5.0,
        seed=0,
    )
    with pytest.raises(ConfigError, match="demo settings: sampler_eta: must be >= 0"):
        DemoSettings.full().replace(sampler_eta=-1)
    with pytest.raises(ConfigError, match="demo settings: sampler: unknown 'heun9'"):
        DemoSettings.full().replace(sampler="heun9")


def test_pipeline_index_checks_its_generation_defaults():
    index = PipelineIndex.from_dict({"audio": {"preset": "x"}}, "old/pipeline.json")
    assert index.generation_defaults == {} and "generation_defaults" not in index.to_dict()
    with pytest.raises(ConfigError, match=r"pipeline.json: generation_defaults: eta: must be"):
        PipelineIndex.from_dict(
            {"audio": {}, "generation_defaults": {"eta": -1}}, "new/pipeline.json"
        )
    with pytest.raises(ConfigError, match="'audio'"):
        PipelineIndex.from_dict({}, "new/pipeline.json")
