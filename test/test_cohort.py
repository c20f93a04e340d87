"""Dataset-mode building blocks without a model: shards, the manifest, the rerun plan, the summary and exit code,
and the cleanup of what a killed writer leaves (cohort/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cohort.manifest import ManifestWriter, file_sha256, latest_records, manifest_path, read_records
from cohort.outcome import CaseError, failed_outcome, partial_files, remove_partial_files, run_case_safely
from cohort.plan import input_fingerprint, plan_cases
from cohort.shard import Shard, parse_shard, select_shard, shard_of
from cohort.summary import CohortSummary
from contract.errors import InputError, OutputError
from contract.imageio import write_image_atomic
from contract.inputs import CaseInputs
from test.conftest import REPO

CASE_IDS = [f"case_{i:03d}" for i in range(300)] + ["HNC_001", "patient with spaces", "ünïcode"]


# -- shards ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_cover_every_case_exactly_once(count):
    shards = [select_shard(CASE_IDS, Shard(i, count), str) for i in range(count)]
    assert sorted(c for shard in shards for c in shard) == sorted(CASE_IDS)
    assert sum(len(shard) for shard in shards) == len(CASE_IDS)
    if count > 1:
        assert all(len(shard) > len(CASE_IDS) / count / 2 for shard in shards), [len(s) for s in shards]


def test_shard_of_a_case_does_not_depend_on_order_or_process():
    """Python's own str hash changes per process (PYTHONHASHSEED); the shard must not."""
    mine = [shard_of(case, 5) for case in CASE_IDS]
    assert [shard_of(case, 5) for case in reversed(CASE_IDS)] == mine[::-1]
    code = ("import json, sys; from cohort.shard import shard_of; "
            "print(json.dumps([shard_of(c, 5) for c in json.loads(sys.argv[1])]))")
    for seed in ("1", "2"):
        result = subprocess.run([sys.executable, "-c", code, json.dumps(CASE_IDS)], capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": seed}, check=True)
        assert json.loads(result.stdout) == mine


@pytest.mark.parametrize("text", ["3", "3/3", "-1/3", "1/0", "a/b", "1/2/3", ""])
def test_bad_shard_is_a_usage_error(text):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)


def test_shard_parses_whitespace_and_prints_back():
    assert parse_shard(" 2 / 5 ") == Shard(2, 5) and str(Shard(2, 5)) == "2/5"


# -- manifest ----------------------------------------------------------------------------------------------------
def test_manifest_survives_a_torn_last_line_and_the_latest_record_wins(tmp_path):
    path = manifest_path(tmp_path, None)
    with ManifestWriter(path) as manifest:
        manifest.append({"case": "a", "status": "failed", "finished_at": "2026-01-01T00:00:00"})
        manifest.append({"case": "b", "status": "done", "finished_at": "2026-01-01T00:00:01"})
    with open(path, "ab") as fh:  # a process killed in the middle of writing a record
        fh.write(b'{"case": "c", "status": "do')
    with ManifestWriter(path) as manifest:
        manifest.append({"case": "a", "status": "done", "finished_at": "2026-01-01T00:00:02"})
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and lines[2].startswith('{"case": "c"') and json.loads(lines[3])["case"] == "a"
    assert [r["case"] for r in read_records(path)] == ["a", "b", "a"]
    latest = latest_records(tmp_path)
    assert sorted(latest) == ["a", "b"] and latest["a"]["status"] == "done"


def test_shard_manifests_are_separate_files_read_together(tmp_path):
    first, second = manifest_path(tmp_path, Shard(0, 2)), manifest_path(tmp_path, Shard(1, 2))
    assert first != second and first.name.startswith("manifest") and first.suffix == ".jsonl"
    with ManifestWriter(first) as manifest:
        manifest.append({"case": "x", "status": "failed", "finished_at": "2026-01-01T00:00:05"})
    with ManifestWriter(second) as manifest:
        manifest.append({"case": "x", "status": "done", "finished_at": "2026-01-01T00:00:09"})
        manifest.append({"case": "y", "status": "done", "finished_at": "2026-01-01T00:00:01"})
    latest = latest_records(tmp_path)
    assert latest["x"]["status"] == "done" and sorted(latest) == ["x", "y"]


def test_unwritable_manifest_is_an_output_error(tmp_path):
    (tmp_path / "manifest.jsonl").mkdir()
    with pytest.raises(OutputError, match="manifest"):
        ManifestWriter(tmp_path / "manifest.jsonl")


# -- one case, whatever it raises --------------------------------------------------------------------------------
def _label_image() -> sitk.Image:
    return sitk.GetImageFromArray(np.arange(60, dtype=np.uint8).reshape(3, 4, 5))


def test_every_exception_of_a_case_becomes_a_recorded_outcome(tmp_path):
    case = CaseInputs("case_01", tmp_path / "ct.nrrd", None)

    def bad_input(case, path):
        raise InputError(case.ct_path, "cannot read CT image (truncated)")

    def bug(case, path):
        raise KeyError("spacing")

    def good(case, path):
        write_image_atomic(_label_image(), path)

    input_outcome = run_case_safely(bad_input, case, tmp_path)
    assert input_outcome.status == "failed" and input_outcome.error.kind == "input"
    assert input_outcome.error.problem == "cannot read CT image (truncated)"
    bug_outcome = run_case_safely(bug, case, tmp_path)
    assert bug_outcome.error.kind == "unexpected" and bug_outcome.error.type == "KeyError"
    assert "in bug" in bug_outcome.error.traceback
    good_outcome = run_case_safely(good, case, tmp_path)
    assert good_outcome.ok and good_outcome.output == "case_01.mha"
    assert good_outcome.sha256 == file_sha256(tmp_path / "case_01.mha")
    with pytest.raises(KeyboardInterrupt):  # stopping the run by hand still stops it
        run_case_safely(lambda c, p: (_ for _ in ()).throw(KeyboardInterrupt()), case, tmp_path)


def test_leftovers_of_a_killed_writer_are_found_and_removed(tmp_path):
    """The atomic writer cleans up after any exception, but a process KILLED before its rename (SIGKILL, as
    ray.kill or the OOM killer send) leaves its temporary file: kill a real writer there."""
    target = tmp_path / "case_01.mha"
    other = tmp_path / "case_011.mha"
    write_image_atomic(_label_image(), other)
    code = ("import os, signal, sys, numpy as np, SimpleITK as sitk; from contract.imageio import write_image_atomic; "
            "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL); "
            "write_image_atomic(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.uint8)), sys.argv[1])")
    result = subprocess.run([sys.executable, "-c", code, str(target)], env={**os.environ, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == -9, result.stderr[-2000:]
    left = partial_files(target)
    assert len(left) == 1 and left[0].name.startswith(".case_01.mha."), list(tmp_path.iterdir())
    remove_partial_files(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_011.mha"]


# -- the rerun plan ----------------------------------------------------------------------------------------------
def _finished_case(tmp_path: Path, case_id: str, config: str = "cfg") -> tuple[CaseInputs, dict]:
    ct = tmp_path / "in" / case_id / f"{case_id}_IMG_CT.nrrd"
    ct.parent.mkdir(parents=True)
    ct.write_bytes(b"ct bytes")
    output = tmp_path / "out" / f"{case_id}.mha"
    write_image_atomic(_label_image(), output)
    case = CaseInputs(case_id, ct, None)
    record = {"case": case_id, "status": "done", "output": output.name, "sha256": file_sha256(output),
              "inputs": input_fingerprint(case, tmp_path / "in"), "run": {"config": config}}
    return case, record


def test_plan_skips_only_verified_current_cases(tmp_path):
    names = ["same", "output_gone", "output_changed", "input_changed", "new", "failed"]
    cases, records = {}, {}
    for name in names:
        cases[name], records[name] = _finished_case(tmp_path, name)
    (tmp_path / "out" / "output_gone.mha").unlink()
    (tmp_path / "out" / "output_changed.mha").write_bytes(b"not the file that was written")
    cases["input_changed"].ct_path.write_bytes(b"another CT")
    del records["new"]
    records["failed"].update(status="failed", output=None, sha256=None)
    ordered = [cases[name] for name in names]

    plan = plan_cases(ordered, records, tmp_path / "in", tmp_path / "out", "cfg")
    assert [c.case_id for c in plan.to_run] == ["output_gone", "output_changed", "input_changed", "new"]
    assert plan.finished == ["same"] and list(plan.failed_before) == ["failed"]

    retry = plan_cases(ordered, records, tmp_path / "in", tmp_path / "out", "cfg", retry_failed=True)
    assert [c.case_id for c in retry.to_run] == ["output_gone", "output_changed", "input_changed", "new", "failed"]
    assert retry.finished == ["same"] and not retry.failed_before

    other_model = plan_cases(ordered, records, tmp_path / "in", tmp_path / "out", "another model")
    assert [c.case_id for c in other_model.to_run] == names and not other_model.finished

    force = plan_cases(ordered, records, tmp_path / "in", tmp_path / "out", "cfg", force=True)
    assert [c.case_id for c in force.to_run] == names


# -- summary and exit code ---------------------------------------------------------------------------------------
def _failure(case_id: str, kind: str, problem: str):
    return failed_outcome(case_id, CaseError(kind=kind, type="X", message=f"/data/{case_id}: {problem}",
                                             problem=problem))


@pytest.mark.parametrize(("kinds", "code"), [
    ((), 0), (("input",), 2), (("input", "output"), 3), (("output", "unexpected", "input"), 1),
    (("worker_died",), 1), (("unexpected", "model"), 4),
])
def test_exit_code_is_that_of_the_most_serious_failure(kinds, code):
    summary = CohortSummary(total=len(kinds), outcomes=[_failure(f"c{i}", k, "p") for i, k in enumerate(kinds)])
    assert summary.exit_code() == code


def test_summary_groups_failures_by_cause_and_ends_with_one_error_line_per_case():
    summary = CohortSummary(total=6, finished_before=1, seconds=30.0, outcomes=[
        _failure("c1", "input", "cannot read CT image"), _failure("c2", "input", "cannot read CT image"),
        _failure("c3", "unexpected", "RuntimeError: boom")],
        failed_before={"c4": {"error": {"kind": "input", "problem": "CT must be a 3-D image", "message": "m"}}})
    lines = summary.lines()
    assert lines[0].startswith("cohort: 6 cases: 1 written (0 now, 1 finished earlier), 4 failed; 3 run in 30.0 s")
    assert "2 x bad input: cannot read CT image: c1, c2" in lines[2]
    assert any("1 x unexpected error (a bug): RuntimeError: boom: c3" in line for line in lines)
    assert [line.split(":")[0] for line in lines[-4:]] == ["error"] * 4
    assert lines[-1].startswith("error: case c4: m (failed in an earlier run; --retry-failed retries it)")
    assert "traceback" in next(line for line in lines if line.startswith("error: case c3"))


# -- usage errors of the dataset-mode flags (exit 2, one error line, nothing written) ----------------------------
def run_process(*args: str | Path, block: str | None = None) -> subprocess.CompletedProcess:
    """``process.py ARGS`` in a fresh interpreter; ``block`` names a module whose import then fails."""
    code = "import runpy, sys; sys.argv = ['process.py'] + sys.argv[1:]; "
    if block:
        code += f"sys.modules[{block!r}] = None; "
    code += f"runpy.run_path({str(REPO / 'process.py')!r}, run_name='__main__')"
    return subprocess.run([sys.executable, "-c", code, *map(str, args), "--no-progress"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO), "HANSEG_THREADS": "1"},
                          timeout=300, cwd=REPO)


def _one_case_dataset(root: Path) -> Path:
    image = sitk.GetImageFromArray(np.zeros((4, 8, 8), np.int16))
    (root / "case_01").mkdir(parents=True)
    sitk.WriteImage(image, str(root / "case_01" / "case_01_IMG_CT.nrrd"))
    return root


def test_ray_engine_without_ray_is_a_usage_error(small_model, tmp_path):
    result = run_process("--input", _one_case_dataset(tmp_path / "in"), "--output", tmp_path / "out",
                         "--model", small_model, "--engine", "ray", block="ray")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: --engine ray: Ray is not installed")
    assert not (tmp_path / "out").exists()


def test_dataset_flags_in_folder_mode_and_a_bad_shard_are_usage_errors(small_model, tmp_path):
    folder = tmp_path / "folder"
    (folder / "images" / "ct").mkdir(parents=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 8, 8), np.int16)), str(folder / "images/ct/a.mha"))
    folder_mode = run_process("--input", folder, "--output", tmp_path / "out", "--model", small_model,
                              "--shard", "0/2")
    assert folder_mode.returncode == 2 and "apply to dataset mode only" in folder_mode.stderr.splitlines()[-1]
    bad_shard = run_process("--input", _one_case_dataset(tmp_path / "in"), "--output", tmp_path / "out",
                            "--model", small_model, "--shard", "2/2")
    assert bad_shard.returncode == 2, bad_shard.stderr[-2000:]
    assert bad_shard.stderr.strip().splitlines()[-1] == "error: --shard 2/2: need 0 <= I < N"
    assert not (tmp_path / "out").exists()
