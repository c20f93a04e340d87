#!/usr/bin/env bash
# Runs INSIDE the Docker build (stage 1 of the Dockerfile): installs the runtime Python packages offline, from the
# wheelhouse only, into a venv that also sees the base image's site-packages.
#
#   install-deps.sh WHEELS_DIR REQ_DIR VENV_DIR
#
# REQ_DIR holds requirements.txt, requirements-nodeps.txt and constraints.txt. Torch: if the base image already
# has torch (the CUDA PyTorch image), it is kept and pinned; its version must match constraints.txt's torch pin.
# Otherwise (plain Debian base) torch is installed from the wheelhouse like every other package.
set -euo pipefail

die() { echo "install-deps.sh: ERROR: $*" >&2; exit 1; }

[[ $# -eq 3 ]] || die "usage: install-deps.sh WHEELS_DIR REQ_DIR VENV_DIR"
wheels="$1"
req="$2"
venv="$3"
for f in requirements.txt requirements-nodeps.txt constraints.txt; do
    [[ -f "$req/$f" ]] || die "$req/$f is missing"
done
command -v python3 >/dev/null || die "the base image has no python3"
shopt -s nullglob
pip_wheels=("$wheels"/pip-*.whl)
[[ ${#pip_wheels[@]} -ge 1 ]] || die "no pip wheel in the wheelhouse ($wheels); make it with ./build.sh"

# A venv with the base's packages visible (the CUDA image's torch lives there). pip comes from the wheelhouse,
# so this works whether or not the base Python ships ensurepip.
python3 -m venv --system-site-packages --without-pip "$venv"
py="$venv/bin/python"
"$py" "${pip_wheels[0]}/pip" install --quiet --no-index --no-cache-dir --ignore-installed \
    --find-links "$wheels" "${pip_wheels[0]}"
pip_install=("$py" -m pip install --no-index --no-cache-dir --find-links "$wheels" --disable-pip-version-check)

pin=$(sed -n 's/^[[:space:]]*torch[[:space:]]*==[[:space:]]*\([^[:space:];#]*\).*/\1/p' "$req/constraints.txt" | head -n 1)
[[ -n "$pin" ]] || die "constraints.txt does not pin torch (expected a line torch==X.Y.Z)"
keep="$req/keep-base-torch.txt"
: >"$keep"
if base_torch=$("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null); then
    [[ "${base_torch%%+*}" == "$pin" ]] \
        || die "the base image has torch $base_torch but constraints.txt pins torch==$pin; use a base image with torch $pin (pytorch/pytorch:$pin-cudaX.Y-cudnn9-runtime) or change the pin"
    echo "torch==$base_torch" >"$keep"
    echo "install-deps.sh: keeping the base image's torch $base_torch"
else
    torch_wheels=("$wheels"/torch-"$pin"-*.whl "$wheels"/torch-"$pin"+*.whl)
    [[ ${#torch_wheels[@]} -ge 1 ]] \
        || die "the base image has no torch and the wheelhouse has no torch $pin wheel; rebuild it with ./build.sh"
    echo "install-deps.sh: the base image has no torch; installing ${torch_wheels[0]##*/}"
fi

"${pip_install[@]}" -c "$req/constraints.txt" -c "$keep" -r "$req/requirements.txt"
"${pip_install[@]}" --no-deps -r "$req/requirements-nodeps.txt"

# Checks: the runtime imports work, torch is the expected one, and nothing pulled torchvision or timm into the venv.
"$py" - "$pin" "${base_torch:-}" "$venv" <<'PY'
import sys
from importlib import metadata
from pathlib import Path

pin, base_torch, venv = sys.argv[1], sys.argv[2], Path(sys.argv[3]).resolve()
import einops, numpy, scipy, SimpleITK, torch, tqdm  # noqa: E401,F401
from dynamic_network_architectures.architectures.unet import PlainConvUNet  # noqa: F401

assert torch.__version__.split("+")[0] == pin, f"torch {torch.__version__} is not the pinned {pin}"
torch_dir = Path(torch.__file__).resolve()
if base_torch:
    assert torch.__version__ == base_torch, f"torch changed from the base's {base_torch} to {torch.__version__}"
    assert venv not in torch_dir.parents, f"torch was reinstalled into the venv ({torch_dir})"
for name in ("torchvision", "timm"):
    for dist in metadata.distributions(path=[str(p) for p in venv.glob("lib/python*/site-packages")]):
        assert dist.metadata["Name"].lower() != name, f"{name} was installed into the venv"
print(f"install-deps.sh: OK: python {sys.version.split()[0]}, torch {torch.__version__} ({torch_dir.parent}), "
      f"numpy {numpy.__version__}, SimpleITK {SimpleITK.Version.VersionString()}")
PY
rm -f "$keep"
