# HaN-Seg head-and-neck OAR segmentation: one linux/amd64 image for grand-challenge.org.
# Build it with ./build.sh (it makes the wheelhouse on the host, then runs docker build); see docker/README.md.
#
# BASE_IMAGE defaults to the official PyTorch CUDA runtime for torch 2.13.0 (the pin in constraints.txt). Its torch
# is kept, never reinstalled. CUDA 12.6 is the 2.13 build that supports the platform's T4 (sm_75) with the oldest
# drivers (the 13.x builds need driver >= 580). Machines without a registry pass a local Debian base instead, and a
# wheelhouse that holds the CPU torch wheel: ./build.sh --base local/bookworm-py:venv
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime

# ---- stage 1: Python packages from the wheelhouse (offline) into /opt/venv, application files into /opt/app.
FROM ${BASE_IMAGE} AS build
# Wheelhouse folder inside the build context (build.sh fills it with `pip download`).
ARG WHEELHOUSE=wheelhouse
COPY ${WHEELHOUSE}/ /build/wheels/
COPY requirements.txt requirements-nodeps.txt constraints.txt docker/install-deps.sh /build/
RUN bash /build/install-deps.sh /build/wheels /build /opt/venv
COPY . /opt/app/
# Drop build-only files, make everything readable for the non-root user whatever the host's file modes were,
# and precompile the code (the final image sets PYTHONDONTWRITEBYTECODE, so nothing is written at run time).
# The compiled fast mode's OpenVINO models of the baked-in weights, converted once here (model/compiled.py), never
# at run time.
WORKDIR /opt/app
RUN rm -rf "/opt/app/${WHEELHOUSE}" /opt/app/docker \
    && /opt/venv/bin/python -m model.compiled --model /opt/app/weights --cache /opt/app/compiled \
    && chmod -R u=rwX,go=rX /opt/app \
    && /opt/venv/bin/python -m compileall -q /opt/app

# ---- stage 2: the image that runs. No wheelhouse, no pip cache, nothing in /tmp.
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="hanseg-oar" \
      org.opencontainers.image.description="HaN-Seg head-and-neck OAR segmentation (CT + T1 MR -> 30 OAR labels)"
# Non-root user "user" (the platform template's name) with a fixed numeric id, so USER is checkable without /etc/passwd.
RUN groupadd --gid 1001 user \
    && useradd --uid 1001 --gid 1001 --create-home --home-dir /home/user --shell /usr/sbin/nologin --no-log-init user
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/app /opt/app
# Caches (torch, matplotlib, XDG) go to the user's home, never to /tmp (empty at start on the platform).
ENV PATH="/opt/venv/bin:${PATH:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}" \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/user \
    XDG_CACHE_HOME=/home/user/.cache \
    TORCH_HOME=/home/user/.cache/torch \
    MPLCONFIGDIR=/home/user/.config/matplotlib \
    HANSEG_INPUT_DIR=/input \
    HANSEG_OUTPUT_DIR=/output
USER 1001:1001
WORKDIR /opt/app
# Platform mode: no arguments. The model comes from /opt/ml/model (if it holds plans.json) or the baked-in weights/.
ENTRYPOINT ["/opt/venv/bin/python", "/opt/app/process.py"]
