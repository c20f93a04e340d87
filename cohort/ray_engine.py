"""The Ray engine: actors that each load the model once; cases as tasks; a dead worker's case goes to another.

- Ray is optional (``requirements-ray.txt``, the package's ``ray`` extra); it is imported only here.
- Without ``address`` a local Ray is started for the run (on the CPUs this process may use, a small object store:
  only case paths and outcomes travel through it) and shut down after; with ``address`` (``auto`` or
  ``HOST:PORT``) the command joins that cluster and leaves it running. The actors must be able to import this code
  base and to read the input and write the output paths (a shared filesystem on a cluster).
- One actor per GPU (``num_gpus=1``) when the cluster has GPUs and the device is not ``cpu``; else one per
  ``cpus_per_worker`` CPUs. Each actor has at most one case at a time, so a dead actor takes exactly one case with
  it: that case's leftover temporary file is removed and the case is given to another actor, up to
  ``max_attempts`` times in all (then it is recorded as ``worker_died``). The dead actor is replaced, within a
  bounded number of replacements.
- Outputs are written atomically by the actor that finishes the case (:func:`contract.imageio.write_image_atomic`);
  the manifest is written by the command only (through ``on_outcome``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cohort.job import EngineSettings, RunnerSpec
from cohort.local_engine import OnOutcome
from cohort.outcome import (
    CaseError,
    CaseOutcome,
    failed_outcome,
    remove_partial_files,
    run_case_safely,
    worker_name,
)
from contract.errors import ModelFolderError
from contract.inputs import CaseInputs
from model.cpu_threads import usable_cores

log = logging.getLogger(__name__)

INIT_TRIES = 3
LOCAL_OBJECT_STORE_BYTES = 128 * 1024**2
"""Object store of a local Ray started by the command (Ray's minimum is 75 MiB): only paths and outcomes in it."""


class RayUnavailableError(ValueError):
    """``--engine ray`` without Ray installed, or a cluster that cannot be reached (a usage error: exit 2)."""


def import_ray() -> Any:  # noqa: ANN401 - the ray module
    try:
        import ray
    except ImportError:
        raise RayUnavailableError("--engine ray: Ray is not installed (pip install -c constraints.txt "
                                  "-r requirements-ray.txt, or the package's [ray] extra)") from None
    return ray


def init_ray(ray: Any, address: str, tries: int = INIT_TRIES, **options: Any) -> None:  # noqa: ANN401
    """``ray.init(address, **options)`` without the dashboard, tried up to ``tries`` times: a raylet gives up
    when its metrics agent has not started within a fixed 15 s, which happens on machines under heavy load
    (ray-project/ray#65983); a later try may get through. Raises RayUnavailableError after the last."""
    for attempt in range(1, tries + 1):
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=True, **options)
            return
        except Exception as err:  # noqa: BLE001 - Ray raises a bare Exception when its node does not start
            ray.shutdown()
            where = "a local Ray" if address == "local" else f"the Ray cluster at {address}"
            if attempt == tries:
                raise RayUnavailableError(f"--engine ray: cannot start or reach {where} "
                                          f"({_first_line(err)})") from None
            log.warning("could not start or reach %s (try %d of %d): %s", where, attempt, tries, _first_line(err))


def start_local_ray(ray: Any, num_cpus: int) -> None:  # noqa: ANN401
    """A Ray for this process only, on ``num_cpus`` CPUs with a small object store. Its workers run at the
    command's own priority: Ray's default lowers them by 15 (``worker_niceness``), which starves them behind any
    other job on a shared machine, and here they do all the work."""
    init_ray(ray, address="local", num_cpus=num_cpus, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
             _system_config={"worker_niceness": 0})


class CaseActor:
    """A Ray actor's state: the case function with its model, built once when the actor starts.

    Exceptions are not sent across (ours do not survive pickling): :meth:`ready` reports a model folder error as
    data, and :meth:`run_case` returns an outcome whatever happens.
    """

    def __init__(self, runner: RunnerSpec, output_root: str) -> None:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        self.output_root = Path(output_root)
        self.load_error: tuple[str, str, str] | None = None  # ("model", path, problem) or ("usage", message, "")
        try:
            self.segment = runner.build()
        except ModelFolderError as err:
            self.load_error = ("model", str(err.path), err.problem)
        except ValueError as err:  # a usage error, e.g. --device cuda where the actor has no GPU
            self.load_error = ("usage", str(err), "")

    def ready(self) -> dict[str, Any]:
        """``{"worker": host:pid, "load_error": None or (kind, ...)}`` once the model is loaded."""
        return {"worker": worker_name(), "load_error": self.load_error}

    def run_case(self, case: CaseInputs) -> CaseOutcome:
        if self.load_error is not None:  # a replacement actor that could not load the model
            _, where, problem = self.load_error
            return failed_outcome(case.case_id, CaseError(kind="model", type="ModelFolderError",
                                                          message=f"{where}: {problem}" if problem else where,
                                                          problem=problem or where))
        return run_case_safely(self.segment, case, self.output_root)


@dataclass
class _Slot:
    """One actor place in the pool."""

    index: int
    actor: Any


class RayEngine:
    """Runs the cases on a pool of Ray actors."""

    name = "ray"

    def __init__(self, runner: RunnerSpec, settings: EngineSettings,
                 on_dispatch: Callable[[CaseInputs, Any], None] | None = None) -> None:
        """``on_dispatch(case, actor)`` is called after a case is handed to an actor (used by tests to kill it)."""
        self.ray = import_ray()
        self.runner = runner
        self.settings = settings
        self.on_dispatch = on_dispatch

    # -- cluster --------------------------------------------------------------------------------------------
    def _connect(self) -> bool:
        """Start or join Ray. Returns True if this call started (and so must stop) it."""
        if self.ray.is_initialized():
            return False
        if self.settings.address:
            init_ray(self.ray, address=self.settings.address)
        else:
            start_local_ray(self.ray, _available_cpus())
        return True

    def _actor_resources(self) -> tuple[int, dict[str, float]]:
        """(number of actors, resources per actor) for this cluster."""
        resources = self.ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        use_gpu = gpus > 0 and str(self.runner.options.get("device", "auto")) != "cpu"
        cpus = self.settings.cpus_per_worker
        default = gpus if use_gpu else max(1, int(resources.get("CPU", 1)) // cpus)
        return self.settings.workers or default, {"num_cpus": cpus, "num_gpus": 1 if use_gpu else 0}

    # -- run ------------------------------------------------------------------------------------------------
    def run(self, cases: Sequence[CaseInputs], output_root: Path, on_outcome: OnOutcome) -> None:
        if not cases:
            return
        started = self._connect()
        try:
            self._run(cases, output_root, on_outcome)
        finally:
            if started:
                self.ray.shutdown()

    def _run(self, cases: Sequence[CaseInputs], output_root: Path, on_outcome: OnOutcome) -> None:
        ray = self.ray
        n_actors, resources = self._actor_resources()
        n_actors = min(n_actors, len(cases))
        actor_class = ray.remote(CaseActor).options(**resources, max_restarts=0)

        def new_actor() -> Any:  # noqa: ANN401
            return actor_class.remote(self.runner, str(output_root))

        slots = [_Slot(i, new_actor()) for i in range(n_actors)]
        log.info("ray: %d actors (%s each), loading the model", n_actors, resources)
        replacements_left = n_actors * self.settings.max_attempts
        pending: deque[tuple[CaseInputs, int]] = deque((case, 1) for case in cases)
        idle: deque[_Slot] = deque(slots)
        in_flight: dict[Any, tuple[_Slot, CaseInputs, int]] = {}
        stop = False
        try:
            self._wait_ready(slots)
            while in_flight or (pending and idle and not stop):
                while idle and pending and not stop:
                    slot = idle.popleft()
                    case, attempt = pending.popleft()
                    in_flight[slot.actor.run_case.remote(case)] = (slot, case, attempt)
                    if self.on_dispatch is not None:
                        self.on_dispatch(case, slot.actor)
                if not in_flight:
                    break
                (ref,), _ = ray.wait(list(in_flight), num_returns=1)
                slot, case, attempt = in_flight.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayActorError as err:
                    remove_partial_files(output_root / f"{case.case_id}.mha")
                    ray.kill(slot.actor, no_restart=True)
                    log.warning("case %s: worker %d died (attempt %d of %d): %s", case.case_id, slot.index, attempt,
                                self.settings.max_attempts, _first_line(err))
                    if replacements_left > 0:
                        replacements_left -= 1
                        slot.actor = new_actor()
                        idle.append(slot)
                    if attempt < self.settings.max_attempts:
                        pending.appendleft((case, attempt + 1))
                        continue
                    outcome = failed_outcome(case.case_id, CaseError(
                        kind="worker_died", type=type(err).__name__, message=_first_line(err),
                        problem=f"the worker died on this case {attempt} times (out of memory?)"), attempts=attempt)
                except ray.exceptions.RayError as err:  # not raised by run_case_safely; recorded all the same
                    idle.append(slot)
                    outcome = failed_outcome(case.case_id, CaseError(
                        kind="unexpected", type=type(err).__name__, message=_first_line(err),
                        problem=f"Ray: {_first_line(err)}"), attempts=attempt)
                else:
                    idle.append(slot)
                    if attempt > 1:
                        outcome = replace(outcome, attempts=attempt)
                if not on_outcome(outcome):
                    stop = True
            if pending and not idle and not stop:
                for case, attempt in pending:
                    on_outcome(failed_outcome(case.case_id, CaseError(
                        kind="worker_died", type="NoWorkersLeft", message="every Ray worker died",
                        problem="no Ray worker left to run the case"), attempts=attempt))
        finally:
            for slot in slots:
                ray.kill(slot.actor, no_restart=True)

    def _wait_ready(self, slots: list[_Slot]) -> None:
        """Wait until every actor has loaded the model; a model folder error is raised as the command's own."""
        reports = self.ray.get([slot.actor.ready.remote() for slot in slots])
        for report in reports:
            if report["load_error"] is not None:
                kind, where, problem = report["load_error"]
                raise ModelFolderError(where, problem) if kind == "model" else ValueError(where)
        log.info("ray: workers ready: %s", ", ".join(report["worker"] for report in reports))


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def _available_cpus() -> int:
    return usable_cores()
