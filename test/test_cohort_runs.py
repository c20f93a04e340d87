"""Dataset mode end to end on 12 small real CTs (test/cohort_support.py): one corrupt file, one case with an injected
unexpected error. Sequential run and reruns through the command line; three shard runs; Ray with 2 actors on a local
Ray started by the test (outputs byte for byte those of the sequential run, also with an actor killed mid-run), the
command line joining that Ray by address, and the command line starting its own local Ray."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from cohort.job import CohortJob, DatasetOptions, EngineSettings, RunnerSpec
from cohort.manifest import MANIFEST_NAME, file_sha256, latest_records, read_records
from cohort.ray_engine import RayEngine, start_local_ray
from cohort.run import run_cohort
from test.cohort_support import CORRUPT_CASE, FAULT_CASE, INJECTED_MESSAGE, make_cohort
from test.conftest import REPO

pytestmark = pytest.mark.slow
MODEL_ARGS = ("--no-tta", "--folds", "0")


def run_cli(*args: str | Path, inject: bool = True) -> subprocess.CompletedProcess:
    """``process.py ARGS`` in a fresh interpreter, one thread; with ``inject``, FAULT_CASE raises RuntimeError."""
    code = "import runpy, sys; sys.argv = ['process.py'] + sys.argv[1:]; "
    if inject:
        code += "from test.cohort_support import inject_fault_into_process; inject_fault_into_process(); "
    code += f"runpy.run_path({str(REPO / 'process.py')!r}, run_name='__main__')"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HANSEG_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *map(str, args), "--no-progress"], capture_output=True,
                          text=True, env=env, timeout=600, cwd=REPO)


def require_ray():  # noqa: ANN201 - the ray module
    """Ray, or a skip outside CI; in CI (setup.sh --test installs requirements-ray.txt) a missing Ray fails."""
    try:
        import ray
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("Ray is not installed, but CI must run the Ray engine tests (setup.sh --test installs it)")
        pytest.skip("Ray is optional and not installed here (pip install -c constraints.txt -r requirements-ray.txt)")
    return ray


def outputs(folder: Path) -> dict[str, str]:
    """Label map name -> SHA-256 of every ``.mha`` in ``folder``."""
    return {p.name: file_sha256(p) for p in sorted(folder.glob("*.mha"))}


def manifest_lines(folder: Path) -> list[dict]:
    return [record for path in sorted(folder.glob("manifest*.jsonl")) for record in read_records(path)]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("cohort") / "dataset"
    return root, make_cohort(root)


@pytest.fixture(scope="module")
def good_cases(cohort) -> list[str]:
    return [c for c in cohort[1] if c not in (CORRUPT_CASE, FAULT_CASE)]


@pytest.fixture(scope="module")
def sequential(cohort, small_model, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The reference: one sequential command-line run over the whole cohort."""
    out = tmp_path_factory.mktemp("sequential") / "out"
    return out, run_cli("--input", cohort[0], "--output", out, "--model", small_model, *MODEL_ARGS)


def test_sequential_run_writes_the_good_cases_and_records_both_failures(sequential, good_cases):
    out, result = sequential
    assert result.returncode == 1, result.stderr[-3000:]  # an unexpected error (a bug) outranks bad input (2)
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{c}.mha" for c in good_cases] + [MANIFEST_NAME])
    records = manifest_lines(out)
    assert len(records) == 12 and len({r["case"] for r in records}) == 12
    by_case = {r["case"]: r for r in records}
    for case in good_cases:
        assert by_case[case]["status"] == "done" and by_case[case]["sha256"] == file_sha256(out / f"{case}.mha")
        assert by_case[case]["seconds"] > 0 and by_case[case]["run"]["model"]["folds"] == ["0"]
    corrupt, fault = by_case[CORRUPT_CASE], by_case[FAULT_CASE]
    assert corrupt["status"] == "failed" and corrupt["error"]["kind"] == "input" and corrupt["output"] is None
    assert CORRUPT_CASE in corrupt["error"]["message"]
    assert fault["error"]["kind"] == "unexpected" and INJECTED_MESSAGE in fault["error"]["message"]
    assert "RuntimeError" in fault["error"]["traceback"]
    stderr = result.stderr.strip().splitlines()
    assert "cohort: 12 cases: 10 written (10 now, 0 finished earlier), 2 failed" in result.stderr
    assert any(line.strip().startswith("1 x bad input:") and CORRUPT_CASE in line for line in stderr)
    assert any(line.strip().startswith("1 x unexpected error (a bug):") and FAULT_CASE in line for line in stderr)
    assert stderr[-2].startswith(f"error: case {CORRUPT_CASE}: ") and stderr[-1].startswith(f"error: case {FAULT_CASE}")


def test_rerun_does_no_work_for_finished_cases_and_retries_only_failed_ones(sequential, cohort, small_model,
                                                                            tmp_path, good_cases):
    out = tmp_path / "out"
    shutil.copytree(sequential[0], out)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mha")}

    plain = run_cli("--input", cohort[0], "--output", out, "--model", small_model, *MODEL_ARGS)
    assert plain.returncode == 1, plain.stderr[-3000:]  # the failures still stand: not retried without the flag
    assert manifest_lines(out) == manifest_lines(sequential[0])  # nothing run, nothing recorded
    assert "12 cases: 10 written (0 now, 10 finished earlier), 2 failed; 0 run" in plain.stderr
    assert "predicting:" not in plain.stderr  # not even the model was needed
    assert "--retry-failed retries it" in plain.stderr.strip().splitlines()[-1]

    (out / f"{good_cases[0]}.mha").unlink()  # a lost output is redone as well
    retry = run_cli("--input", cohort[0], "--output", out, "--model", small_model, *MODEL_ARGS, "--retry-failed",
                    inject=False)  # the "bug" is fixed: FAULT_CASE now succeeds
    assert retry.returncode == 2, retry.stderr[-3000:]  # only the corrupt file is left
    new = manifest_lines(out)[12:]
    assert sorted(r["case"] for r in new) == sorted([good_cases[0], CORRUPT_CASE, FAULT_CASE])
    assert len({r["run"]["run_id"] for r in new}) == 1
    assert {r["case"]: r["status"] for r in new} == {good_cases[0]: "done", CORRUPT_CASE: "failed", FAULT_CASE: "done"}
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mha")}
    assert {k: v for k, v in after.items() if k in before and k != f"{good_cases[0]}.mha"} == \
        {k: v for k, v in before.items() if k != f"{good_cases[0]}.mha"}  # finished outputs untouched
    assert outputs(out)[f"{good_cases[0]}.mha"] == outputs(sequential[0])[f"{good_cases[0]}.mha"]
    assert latest_records(out)[FAULT_CASE]["sha256"] == file_sha256(out / f"{FAULT_CASE}.mha")


def test_three_shards_write_exactly_the_cases_of_one_full_run(sequential, cohort, small_model, tmp_path):
    out = tmp_path / "out"
    results = [run_cli("--input", cohort[0], "--output", out, "--model", small_model, *MODEL_ARGS,
                       "--shard", f"{i}/3") for i in range(3)]
    per_shard = [[r["case"] for r in read_records(out / f"manifest.shard-{i}-of-3.jsonl")] for i in range(3)]
    assert all(shard for shard in per_shard), per_shard
    assert sorted(c for shard in per_shard for c in shard) == cohort[1]  # every case once, none twice
    assert outputs(out) == outputs(sequential[0])
    assert [r.returncode for r in results] == [1 if FAULT_CASE in s else 2 if CORRUPT_CASE in s else 0
                                               for s in per_shard]


def test_command_line_ray_engine_starts_its_own_local_ray(cohort, small_model, sequential, tmp_path, good_cases):
    require_ray()
    subset = tmp_path / "subset"
    for case in good_cases[:2]:
        shutil.copytree(cohort[0] / case, subset / case)
    result = run_cli("--input", subset, "--output", tmp_path / "out", "--model", small_model, *MODEL_ARGS,
                     "--engine", "ray", "--workers", "1", inject=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Started a local Ray instance" in result.stderr
    assert outputs(tmp_path / "out") == {k: v for k, v in outputs(sequential[0]).items()
                                          if k in {f"{c}.mha" for c in good_cases[:2]}}
    assert {r["run"]["engine"] for r in manifest_lines(tmp_path / "out")} == {"ray"}


# -- Ray on a local cluster started by the test ------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    ray = require_ray()
    start_local_ray(ray, num_cpus=2)
    yield ray
    ray.shutdown()


def ray_job(cohort_root: Path, out: Path, model: Path, **runner_extra) -> CohortJob:
    """A 2-actor Ray job whose actors run process.py's case function with FAULT_CASE failing."""
    from hanseg.settings import Settings

    options = asdict(Settings(model_dir=model, folds=("0",), use_mirroring=False, threads=1, progress=False))
    return CohortJob(cohort_root, out, RunnerSpec("test.cohort_support:build_faulty_runner",
                                                  {**options, **runner_extra}),
                     facts={"test": "ray"}, options=DatasetOptions(engine=EngineSettings("ray", workers=2)),
                     progress=False)


def test_ray_with_two_actors_gives_the_sequential_outputs_byte_for_byte(ray_cluster, cohort, small_model,
                                                                        sequential, tmp_path):
    out = tmp_path / "out"
    summary = run_cohort(ray_job(cohort[0], out, small_model))
    assert outputs(out) == outputs(sequential[0])
    assert summary.exit_code() == 1 and summary.written_now == 10
    records = latest_records(out)
    assert records[CORRUPT_CASE]["error"]["kind"] == "input" and records[FAULT_CASE]["error"]["kind"] == "unexpected"
    assert len({r["worker"] for r in records.values() if r["status"] == "done"}) == 2  # both actors worked


def test_a_killed_actor_s_case_is_retried_on_another_and_every_case_is_written_once(ray_cluster, cohort, small_model,
                                                                                     sequential, tmp_path):
    out, write_log = tmp_path / "out", tmp_path / "writes.log"
    dispatched: list[str] = []

    def kill_on_third_dispatch(case, actor) -> None:
        """Kill the actor that was just handed the third case, while that case is in flight."""
        dispatched.append(case.case_id)
        if len(dispatched) == 3:
            ray_cluster.kill(actor, no_restart=True)

    job = ray_job(cohort[0], out, small_model, write_log=str(write_log))
    summary = run_cohort(job, RayEngine(job.runner, job.options.engine, on_dispatch=kill_on_third_dispatch))
    killed = dispatched[2:3]
    assert sorted(p.name for p in out.iterdir()) == sorted(list(outputs(sequential[0])) + [MANIFEST_NAME])
    assert outputs(out) == outputs(sequential[0])  # nothing partial, nothing else
    writes = write_log.read_text().split()
    assert sorted(writes) == sorted(name[:-4] for name in outputs(sequential[0]))  # each case written once
    records = manifest_lines(out)
    assert sorted(r["case"] for r in records) == cohort[1]  # one record per case
    retried = [r for r in records if r["attempts"] > 1]
    assert [r["case"] for r in retried] == killed and retried[0]["status"] == "done"
    assert summary.exit_code() == 1


def test_command_line_joins_a_ray_cluster_by_address(ray_cluster, cohort, small_model, sequential, tmp_path,
                                                     good_cases):
    address = ray_cluster.get_runtime_context().gcs_address
    result = run_cli("--input", cohort[0], "--output", tmp_path / "out", "--model", small_model, *MODEL_ARGS,
                     "--engine", "ray", "--address", address, "--workers", "2", inject=False)
    assert result.returncode == 2, result.stderr[-3000:]  # no injected fault in the actors: only the corrupt case
    written = outputs(tmp_path / "out")
    assert {k: v for k, v in written.items() if k != f"{FAULT_CASE}.mha"} == outputs(sequential[0])
    assert f"{FAULT_CASE}.mha" in written
    assert json.loads((tmp_path / "out" / MANIFEST_NAME).read_text().splitlines()[0])["run"]["engine"] == "ray"
