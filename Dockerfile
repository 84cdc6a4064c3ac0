# One image for the gateway (relight-api), the worker (relight-worker), the admin CLI
# (relight-admin) and the migrations (alembic upgrade head). Pick the role with the command.
#
#   docker build -t relight .                          # api / worker / migrate
#   docker build -t relight-node --build-arg EXTRAS=node .   # + torch/diffusers for the GPU node
#
# EXTRAS is a comma-separated list of the optional dependency groups in pyproject.toml
# (e.g. "node" or "node,dev"); empty installs the core package only.

ARG PYTHON_IMAGE=python:3.11-slim

# --------------------------------------------------------------------------- build stage
FROM ${PYTHON_IMAGE} AS build

ARG EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first, from pyproject.toml alone, so that editing the code does not reinstall
# them (this layer matters most for EXTRAS=node: torch is gigabytes).
COPY pyproject.toml ./
RUN python -c 'import os, tomllib; \
p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
deps = list(p.get("dependencies", [])); \
extras = [e.strip() for e in os.environ.get("EXTRAS", "").split(",") if e.strip()]; \
[deps.extend(p.get("optional-dependencies", {})[e]) for e in extras]; \
print("\n".join(deps))' > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt

# Then the project itself (the .dockerignore keeps .venv, .git, tests, caches... out).
COPY . .
# hadolint ignore=DL3013
RUN if [ -n "${EXTRAS}" ]; then target=".[${EXTRAS}]"; else target="."; fi \
 && pip install --no-cache-dir "${target}"

# ------------------------------------------------------------------------- runtime stage
FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    RELIGHT_STORAGE_DIR=/data

# Unprivileged user. /data (inputs/outputs shared by api and worker) and /models (GPU node
# weights, mounted read-only) exist in the image so that a fresh named volume mounted on
# /data inherits the relight ownership.
RUN groupadd --system --gid 10001 relight \
 && useradd --system --uid 10001 --gid relight --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin relight \
 && mkdir -p /app /data /models \
 && chown relight:relight /app /data

COPY --from=build /opt/venv /opt/venv

# alembic runs from here: `alembic upgrade head` finds alembic.ini in the working directory.
WORKDIR /app
COPY alembic.ini ./
COPY migrations ./migrations

# Numeric, so that runtimes enforcing runAsNonRoot can check it.
USER 10001:10001

EXPOSE 8000

# No HEALTHCHECK here: the same image runs the worker and the one-shot migrate job, which
# serve no HTTP. docker-compose.yml gives the api service its own healthcheck on /healthz.
CMD ["relight-api", "--host", "0.0.0.0", "--port", "8000"]
