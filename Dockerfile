# syntax=docker/dockerfile:1
# The telerad-broker image: `telerad serve` and `telerad audit ...` as uid 10001, no build tools,
# no shell tools beyond the base image's. Kubernetes probes replace a HEALTHCHECK.
#
#   docker build -t telerad-broker:0.1.0 .
#
# The base image is pinned by tag; where the registry is reachable, pin its digest as well
# (FROM python:3.11.13-slim-bookworm@sha256:...). tests/helm/test_dockerfile.py checks the
# invariants (hadolint is not reachable from the build machines).

# ---- builder: wheels of the broker and every dependency, installed into a venv ----------------
FROM python:3.11.13-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps the rest, the dev stack included, out).
COPY pyproject.toml README.md ./
COPY broker ./broker
COPY streams ./streams
# Every dependency ships manylinux wheels for CPython 3.11, so no compiler is needed here either.
RUN pip wheel --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links /wheels telerad-broker \
 && /opt/venv/bin/pip uninstall --yes pip setuptools wheel \
 && /opt/venv/bin/telerad --help > /dev/null

# ---- viewer: the pinned OHIF package from the npm registry, checked (sha512) and unpacked ------
FROM python:3.11.13-slim-bookworm AS viewer
ARG NPM_REGISTRY=https://registry.npmjs.org
COPY broker/pages/ohif_package.py /ohif_package.py
RUN NPM_REGISTRY="$NPM_REGISTRY" python /ohif_package.py /opt/telerad/viewer

# ---- runtime: the venv on a clean base, as a non-root user -------------------------------------
FROM python:3.11.13-slim-bookworm AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 telerad \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin telerad \
 && python -m pip uninstall --yes pip setuptools wheel
COPY --from=builder /opt/venv /opt/venv
COPY --from=viewer /opt/telerad/viewer /opt/telerad/viewer
ENV TELERAD_VIEWER_DIR=/opt/telerad/viewer
# Nothing is written here: the chart mounts the volumes and a tmpfs /tmp (read-only root).
WORKDIR /var/lib/telerad
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["telerad"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
