"""The one settings object: every command-line flag and ``HANSEG_*`` variable, read and validated in one place.

:meth:`Settings.from_sources` is the only reader of the environment for inference; a bad value raises
:class:`SettingsError` naming the flag or variable (the command line turns it into exit code 2). Flags win over
variables, variables over defaults. Nothing here touches global state (threads are applied by the caller).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

APP_DIR = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = APP_DIR / "weights"
PLATFORM_MODEL_DIR = Path("/opt/ml/model")
PLATFORM_INPUT_DIR = Path("/input")
PLATFORM_OUTPUT_DIR = Path("/output")

ENV_INPUT_DIR = "HANSEG_INPUT_DIR"
ENV_OUTPUT_DIR = "HANSEG_OUTPUT_DIR"
ENV_MODEL_DIR = "HANSEG_MODEL_DIR"
ENV_THREADS = "HANSEG_THREADS"
ENV_TIME_BUDGET = "HANSEG_TIME_BUDGET"
ENV_DEVICE = "HANSEG_DEVICE"
ENV_RECORD_DIR = "HANSEG_RECORD_DIR"
ENV_VARIABLES = (ENV_INPUT_DIR, ENV_OUTPUT_DIR, ENV_MODEL_DIR, ENV_THREADS, ENV_TIME_BUDGET, ENV_DEVICE,
                 ENV_RECORD_DIR)
"""Every ``HANSEG_*`` variable inference reads (training and tests have their own, documented where used)."""

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_FOLD = re.compile(r"^(\d+|all)$")


class SettingsError(ValueError):
    """A flag or variable with a bad value. ``str(err)`` is ``<name>: <problem>`` (shown as ``error: ...``)."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(f"{name}: {problem}")


@dataclass(frozen=True)
class Settings:
    """Everything a run may set. The inference fields (device .. reorient) are what :func:`hanseg.segment` uses
    and what a run record stores to reproduce a label map; the others only concern the command line.

    Attributes:
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda`` or ``cuda:N``.
        folds: fold names to ensemble (``("0", "1")``), None = every fold of the model folder.
        use_mirroring: mirroring test-time augmentation over the model's allowed axes.
        tile_step: sliding-window step as a fraction of the patch, in (0, 1].
        fast: fast CPU mode (:mod:`model.fast`).
        time_budget: wall seconds per case (> 0), None = no budget.
        reorient: permute the CT to the model's training orientation (False: ``--as-stored``).
        model_dir: the nnU-Net v2 model folder.
        input_root, output_root: the command line's roots.
        qa_dir: where QA pictures, volumes and run records go (None: not written).
        record_dir: where run records and transforms go on request (None: only with ``qa_dir``).
        threads: CPU threads (>= 1), None = the usable cores no other process is busy on at start-up
            (``model.cpu_threads.default_threads``).
        progress: show progress bars.
        trust_model: unpickle checkpoints without restriction (``--trust-model``; model/checkpoint_loading.py).
    """

    device: str = "auto"
    folds: tuple[str, ...] | None = None
    use_mirroring: bool = True
    tile_step: float = 0.5
    fast: bool = False
    time_budget: float | None = None
    reorient: bool = True
    model_dir: Path = field(default=DEFAULT_MODEL_DIR)
    input_root: Path = PLATFORM_INPUT_DIR
    output_root: Path = PLATFORM_OUTPUT_DIR
    qa_dir: Path | None = None
    record_dir: Path | None = None
    trust_model: bool = False
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`SettingsError` for a value no run can use (named by its command-line flag)."""
        parse_device(self.device, "--device")
        if self.folds is not None:
            if not self.folds:
                raise SettingsError("--folds", "needs at least one fold")
            for fold in self.folds:
                if not _FOLD.match(str(fold)):
                    raise SettingsError("--folds", f"fold names are whole numbers (or 'all'), got {fold!r}")
        parse_tile_step(self.tile_step, "--tile-step")
        if self.time_budget is not None:
            parse_time_budget(self.time_budget, "--time-budget")
        if self.threads is not None:
            parse_threads(self.threads, "--threads")

    def inference_dict(self) -> dict[str, Any]:
        """The fields that decide the label map, as JSON values (stored in the run record)."""
        keep = ("device", "folds", "use_mirroring", "tile_step", "fast", "time_budget", "reorient")
        values = {k: v for k, v in asdict(self).items() if k in keep}
        values["folds"] = list(self.folds) if self.folds is not None else None
        return values

    def with_inference(self, values: Mapping[str, Any]) -> Settings:
        """A copy with the inference fields of a run record's ``settings`` (validated)."""
        known = {f.name for f in fields(self)}
        unknown = set(values) - known
        if unknown:
            raise SettingsError("settings", f"unknown fields {sorted(unknown)}")
        changes = dict(values)
        if changes.get("folds") is not None:
            changes["folds"] = tuple(str(f) for f in changes["folds"])
        return replace(self, **changes)

    @classmethod
    def from_sources(cls, flags: Mapping[str, Any] | None = None,
                     environ: Mapping[str, str] | None = None) -> Settings:
        """Build the settings from parsed command-line flags (None = not given) and the environment.

        Args:
            flags: keys as the :class:`Settings` field names; values as given on the command line (strings for
                numbers, so that a bad one is reported here, by name). Missing or None: not given.
            environ: the environment (default ``os.environ``).

        Raises:
            SettingsError: naming the flag or variable whose value is unusable.
        """
        flags = {k: v for k, v in (flags or {}).items() if v is not None}
        env = os.environ if environ is None else environ
        unknown = set(flags) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown settings {sorted(unknown)}")

        def from_env(name: str) -> str | None:
            value = env.get(name)
            return value if value not in (None, "") else None

        values: dict[str, Any] = {}
        values["device"] = parse_device(flags["device"], "--device") if "device" in flags else (
            parse_device(env_device, ENV_DEVICE) if (env_device := from_env(ENV_DEVICE)) else "auto")
        if "threads" in flags:
            values["threads"] = parse_threads(flags["threads"], "--threads")
        elif (env_threads := from_env(ENV_THREADS)) is not None:
            values["threads"] = parse_threads(env_threads, ENV_THREADS)
        if "time_budget" in flags:
            values["time_budget"] = parse_time_budget(flags["time_budget"], "--time-budget")
        elif (env_budget := from_env(ENV_TIME_BUDGET)) is not None:
            values["time_budget"] = parse_time_budget(env_budget, ENV_TIME_BUDGET)
        if "tile_step" in flags:
            values["tile_step"] = parse_tile_step(flags["tile_step"], "--tile-step")
        if "folds" in flags:
            values["folds"] = tuple(str(f) for f in flags["folds"])
        for name in ("use_mirroring", "fast", "reorient", "progress", "trust_model"):
            if name in flags:
                values[name] = bool(flags[name])
        values["input_root"] = _path(flags.get("input_root"), from_env(ENV_INPUT_DIR), ENV_INPUT_DIR,
                                     PLATFORM_INPUT_DIR)
        values["output_root"] = _path(flags.get("output_root"), from_env(ENV_OUTPUT_DIR), ENV_OUTPUT_DIR,
                                      PLATFORM_OUTPUT_DIR)
        values["model_dir"] = _path(flags.get("model_dir"), from_env(ENV_MODEL_DIR), ENV_MODEL_DIR,
                                    default_model_dir())
        if "qa_dir" in flags:
            values["qa_dir"] = Path(flags["qa_dir"])
        record = _path(flags.get("record_dir"), from_env(ENV_RECORD_DIR), ENV_RECORD_DIR, None)
        if record is not None:
            values["record_dir"] = record
        return cls(**values)


def default_model_dir() -> Path:
    """``/opt/ml/model`` (if it holds a plans.json: a platform model tarball) > ``weights/``."""
    return PLATFORM_MODEL_DIR if (PLATFORM_MODEL_DIR / "plans.json").is_file() else DEFAULT_MODEL_DIR


def _path(flag: Any, env_value: str | None, env_name: str, default: Path | None) -> Path | None:
    if flag is not None:
        return Path(flag)
    if env_value is not None:
        if "\x00" in env_value:
            raise SettingsError(env_name, "contains a NUL character")
        return Path(env_value)
    return default


def parse_device(value: Any, name: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (whether CUDA is present is checked when the model loads)."""
    text = str(value).strip().lower()
    if not _DEVICE.match(text):
        raise SettingsError(name, f"unsupported device {value!r} (use auto, cpu, cuda or cuda:N)")
    return text


def parse_threads(value: Any, name: str) -> int:
    """A whole number of CPU threads >= 1."""
    try:
        threads = int(str(value).strip()) if not isinstance(value, bool) else None
    except ValueError:
        threads = None
    if threads is None or threads < 1 or str(value).strip() != str(threads):
        raise SettingsError(name, f"must be a whole number of threads >= 1, got {value!r}")
    return threads


def _positive_float(value: Any, name: str, what: str) -> float:
    try:
        number = float(str(value).strip()) if not isinstance(value, bool) else math.nan
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise SettingsError(name, f"must be {what}, got {value!r}")
    return number


def parse_time_budget(value: Any, name: str) -> float:
    """Seconds per case, a finite number > 0."""
    return _positive_float(value, name, "a number of seconds > 0")


def parse_tile_step(value: Any, name: str) -> float:
    """A fraction of the patch in (0, 1]."""
    step = _positive_float(value, name, "a fraction of the patch in (0, 1]")
    if step > 1:
        raise SettingsError(name, f"must be a fraction of the patch in (0, 1], got {value!r}")
    return step
