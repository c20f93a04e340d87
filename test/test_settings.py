"""The one settings object: every flag and HANSEG_* variable validated at start; a bad value exits 2 naming it.

The end-to-end cases run the real command line (``process.py`` in a fresh interpreter); they fail before any model
is loaded, so they are quick.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hanseg.settings import ENV_VARIABLES, Settings, SettingsError
from test.test_process import run_process

BAD_FLAGS = [
    (("--threads", "-1"), "--threads"),
    (("--threads", "0"), "--threads"),
    (("--threads", "1.5"), "--threads"),
    (("--device", "tpu"), "--device"),
    (("--device", "cuda:x"), "--device"),
    (("--tile-step", "0"), "--tile-step"),
    (("--tile-step", "1.5"), "--tile-step"),
    (("--tile-step", "half"), "--tile-step"),
    (("--time-budget", "-5"), "--time-budget"),
    (("--time-budget", "nan"), "--time-budget"),
    (("--folds", "zero"), "--folds"),
]

BAD_VARIABLES = [
    ("HANSEG_THREADS", "two"),
    ("HANSEG_THREADS", "-3"),
    ("HANSEG_TIME_BUDGET", "soon"),
    ("HANSEG_TIME_BUDGET", "0"),
    ("HANSEG_TIME_BUDGET", "inf"),
    ("HANSEG_DEVICE", "tpu"),
]


def assert_usage_error(result, name: str) -> None:  # noqa: ANN001
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {name}: "), last
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("flags", "name"), BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_a_bad_flag_exits_2_naming_the_flag(flags: tuple[str, ...], name: str, small_model: Path,
                                            tmp_path: Path) -> None:
    (tmp_path / "in" / "images" / "ct").mkdir(parents=True)
    result = run_process("--input", tmp_path / "in", "--output", tmp_path / "out", "--model", small_model, *flags)
    assert_usage_error(result, name)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("variable", "value"), BAD_VARIABLES, ids=[f"{k}={v}" for k, v in BAD_VARIABLES])
def test_a_bad_variable_exits_2_naming_the_variable(variable: str, value: str, small_model: Path,
                                                    tmp_path: Path) -> None:
    (tmp_path / "in" / "images" / "ct").mkdir(parents=True)
    result = run_process("--input", tmp_path / "in", "--output", tmp_path / "out", "--model", small_model,
                         env={variable: value})
    assert_usage_error(result, variable)


def test_every_variable_of_the_settings_has_a_bad_value_test() -> None:
    """A new HANSEG_* variable must come with its validation test here (path variables take any path: their
    problems are reported by the input / model folder checks, with their own exit codes)."""
    paths = {"HANSEG_INPUT_DIR", "HANSEG_OUTPUT_DIR", "HANSEG_MODEL_DIR", "HANSEG_RECORD_DIR"}
    assert set(ENV_VARIABLES) - paths == {name for name, _ in BAD_VARIABLES}


def test_a_record_folder_inside_the_platform_output_folder_is_refused(small_model: Path, tmp_path: Path) -> None:
    (tmp_path / "in" / "images" / "ct").mkdir(parents=True)
    out = tmp_path / "out"
    result = run_process("--input", tmp_path / "in", "--output", out, "--model", small_model,
                         env={"HANSEG_RECORD_DIR": str(out / "images" / "head_neck_oar" / "records")})
    assert_usage_error(result, "HANSEG_RECORD_DIR")


def test_flags_win_over_variables_and_variables_over_defaults() -> None:
    env = {"HANSEG_THREADS": "3", "HANSEG_TIME_BUDGET": "90", "HANSEG_DEVICE": "cpu", "HANSEG_MODEL_DIR": "/m"}
    from_env = Settings.from_sources({}, env)
    assert (from_env.threads, from_env.time_budget, from_env.device, from_env.model_dir) == (3, 90.0, "cpu",
                                                                                                 Path("/m"))
    flagged = Settings.from_sources({"threads": "1", "time_budget": "30", "device": "auto"}, env)
    assert (flagged.threads, flagged.time_budget, flagged.device) == (1, 30.0, "auto")
    default = Settings.from_sources({}, {})
    assert (default.threads, default.time_budget, default.device, default.tile_step) == (None, None, "auto", 0.5)


def test_an_empty_variable_counts_as_unset() -> None:
    assert Settings.from_sources({}, {"HANSEG_THREADS": "", "HANSEG_TIME_BUDGET": ""}).threads is None


def test_settings_built_in_code_are_validated_too() -> None:
    with pytest.raises(SettingsError, match="--tile-step"):
        Settings(tile_step=0.0)
    with pytest.raises(SettingsError, match="--device"):
        Settings(device="tpu")


def test_inference_settings_round_trip_through_a_record() -> None:
    settings = Settings(device="cpu", folds=("0", "1"), use_mirroring=False, tile_step=0.75, time_budget=60.0)
    rebuilt = Settings().with_inference(settings.inference_dict())
    assert rebuilt.inference_dict() == settings.inference_dict()
    with pytest.raises(SettingsError, match="unknown"):
        Settings().with_inference({"colour": "blue"})
