# syntax=docker/dockerfile:1
# The telerad-broker image: `telerad serve` and `telerad audit ...` as uid 10001, no build tools,
# no shell tools beyond the base image's. Kubernetes probes replace a HEALTHCHECK.
#
#   docker build -t telerad-broker:0.1.0 .
#   docker build --build-arg BASE=telerad-local/base:<key> -t telerad-broker:0.1.0 .
#
# BASE is the image every stage starts from: by default the public Python image, pinned by tag
# (where the registry is reachable, pin its digest as well: python:3.11.13-slim-bookworm@sha256:...).
# Any Debian bookworm image with `python` (3.11) and its venv module works too: CI, with no
# registry, builds FROM a base it makes from a debootstrap root filesystem (devstack/images.py;
# Debian's python3, python3-venv, python-is-python3). tests/helm/test_dockerfile.py checks the
# invariants of this file, tests/containers/ those of the built image.
ARG BASE=python:3.11.13-slim-bookworm

# ---- builder: wheels of the broker and every dependency, installed into a venv ----------------
FROM ${BASE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps the rest, the dev stack included, out).
COPY pyproject.toml README.md ./
COPY broker ./broker
COPY streams ./streams
# Every dependency ships manylinux wheels for CPython 3.11, so no compiler is needed here either.
# The venv's own pip builds the wheels: Debian's python3 has no pip outside a venv.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip wheel --wheel-dir /wheels . \
 && /opt/venv/bin/pip install --no-index --find-links /wheels telerad-broker \
 && /opt/venv/bin/pip uninstall --yes pip setuptools wheel \
 && /opt/venv/bin/telerad --help > /dev/null

# ---- viewer: the pinned OHIF package from the npm registry, checked (sha512) and unpacked ------
FROM ${BASE} AS viewer
ARG NPM_REGISTRY=https://registry.npmjs.org
COPY broker/pages/ohif_package.py /ohif_package.py
RUN NPM_REGISTRY="$NPM_REGISTRY" python /ohif_package.py /opt/telerad/viewer

# ---- runtime: the venv on a clean base, as a non-root user -------------------------------------
FROM ${BASE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 telerad \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin telerad \
 && if python -m pip --version > /dev/null 2>&1; then \
        python -m pip uninstall --yes pip setuptools wheel; fi
COPY --from=builder /opt/venv /opt/venv
COPY --from=viewer /opt/telerad/viewer /opt/telerad/viewer
ENV TELERAD_VIEWER_DIR=/opt/telerad/viewer
# Nothing is written here: the chart mounts the volumes and a tmpfs /tmp (read-only root).
WORKDIR /var/lib/telerad
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["telerad"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
