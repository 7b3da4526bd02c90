# syntax=docker/dockerfile:1
# trtserve: KServe v2 gRPC and REST inference server for TensorRT version-compatible engines.
#
#   docker build -t trtserve --build-arg LEAN_VERSIONS="11.0.0.114 11.4.0.106" .
#   docker run --gpus all -p 8000:8000 -p 8001:8001 -p 8002:8002 \
#     -v "$PWD/models:/var/lib/trtserve/models" trtserve
#
# No CUDA base image: the TensorRT dispatch and lean libraries link the CUDA runtime statically
# and need only the driver, which the NVIDIA container toolkit mounts from the host; the one
# CUDA library a lean runtime opens itself, NVRTC, comes from its pip wheel. docs/deploy.md
# says what the image weighs and why.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# Exact TensorRT versions whose lean runtimes ship in the image (space-separated), and the CUDA
# major version of their wheels. More can be added later without rebuilding: docs/deploy.md.
ARG LEAN_VERSIONS="11.4.0.106"
ARG LEAN_CUDA=13
# Any CUDA 13 NVRTC works with a CUDA 13 driver (r580+); pinned for reproducible builds.
ARG NVRTC_VERSION=13.5.37
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/trtserve/venv
ENV PATH=/opt/trtserve/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY server ./server
COPY client ./client
COPY cli ./cli
# NVRTC is the CUDA 13 runtime compiler that lean runtimes open by name (libnvrtc.so.13).
RUN pip install "./[tensorrt]" "nvidia-cuda-nvrtc==${NVRTC_VERSION}" \
    && python -m compileall -q /opt/trtserve/venv \
    && find /opt/trtserve/venv -path '*/nvidia/cu13/lib' -type d > /opt/trtserve/ld.so.conf \
    && test -s /opt/trtserve/ld.so.conf
COPY deploy/docker-entrypoint.sh deploy/install-runtimes.sh deploy/healthcheck.py /opt/trtserve/bin/
RUN LEAN_VERSIONS="${LEAN_VERSIONS}" LEAN_CUDA="${LEAN_CUDA}" \
    /opt/trtserve/bin/install-runtimes.sh /opt/trtserve/runtimes

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="trtserve" \
      org.opencontainers.image.description="KServe v2 gRPC server for TensorRT version-compatible engines" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /opt/trtserve /opt/trtserve
# Lets the lean runtimes' dlopen("libnvrtc.so.13") find the wheel's library without relying on
# LD_LIBRARY_PATH, which a pod spec may override.
RUN cp /opt/trtserve/ld.so.conf /etc/ld.so.conf.d/trtserve-nvrtc.conf \
    && ldconfig \
    && groupadd --system --gid 10001 trtserve \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/trtserve --no-create-home \
       --shell /usr/sbin/nologin trtserve \
    && mkdir -p /var/lib/trtserve/models /var/lib/trtserve/runtimes \
    && chown -R 10001:10001 /var/lib/trtserve
# Writable paths are only the model repository, the runtimes folder and /tmp, so the container
# runs with a read-only root filesystem. Runtimes baked in at /opt/trtserve/runtimes are linked
# into the runtimes folder by the entrypoint.
ENV PATH=/opt/trtserve/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    TRTSERVE_REPOSITORY=/var/lib/trtserve/models \
    TRTSERVE_RUNTIMES_DIR=/var/lib/trtserve/runtimes \
    TRTSERVE_BAKED_RUNTIMES_DIR=/opt/trtserve/runtimes \
    TRTSERVE_HTTP_PORT=8000 \
    TRTSERVE_GRPC_PORT=8001 \
    TRTSERVE_METRICS_PORT=8002 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /var/lib/trtserve
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/opt/trtserve/bin/healthcheck.py"]
# The entrypoint execs `trtserve serve`, so the server is PID 1 and gets SIGTERM itself: it
# turns unready, drains for TRTSERVE_GRACE_PERIOD_S and exits 0.
ENTRYPOINT ["/opt/trtserve/bin/docker-entrypoint.sh"]
CMD []
