# Two images, one per deployable, each with only what it runs:
#
#   docker build -t relight .                         # the service: relight-api, relight-worker,
#                                                     #   relight-admin, alembic upgrade head
#   docker build -t relight-node --target node .      # the GPU node: relight-node with torch and
#                                                     #   diffusers, no Postgres driver or arq
#
# The service image installs the `service` extra of pyproject.toml, the node image the `node`
# extra; neither installs the other's (tests/inference/test_node_dependencies.py).

ARG PYTHON_IMAGE=python:3.11-slim

# ------------------------------------------------------------------------- build stages
FROM ${PYTHON_IMAGE} AS build-base

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first, from pyproject.toml alone, so that editing the code does not reinstall
# them (this layer matters most for the node: torch is gigabytes): one requirements file per
# image, the core dependencies plus its extra.
COPY pyproject.toml ./
RUN python -c 'import tomllib; \
p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
[open(f"/tmp/requirements-{e}.txt", "w").write( \
    "\n".join(p["dependencies"] + p["optional-dependencies"][e]) + "\n") \
 for e in ("service", "node")]'

FROM build-base AS build-service
RUN pip install --no-cache-dir -r /tmp/requirements-service.txt
# Then the project itself (the .dockerignore keeps .venv, .git, tests, caches... out).
COPY . .
RUN pip install --no-cache-dir ".[service]"

FROM build-base AS build-node
RUN pip install --no-cache-dir -r /tmp/requirements-node.txt
COPY . .
RUN pip install --no-cache-dir ".[node]"

# ----------------------------------------------------------------------- runtime stages
FROM ${PYTHON_IMAGE} AS runtime-base

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

WORKDIR /app

# The GPU node: `docker build --target node`.
FROM runtime-base AS node

COPY --from=build-node /opt/venv /opt/venv

# Numeric, so that runtimes enforcing runAsNonRoot can check it (deploy/kubernetes runs the pods
# as this uid and gid; tests/deploy checks they match).
USER 10001:10001

EXPOSE 9000

CMD ["relight-node", "--host", "0.0.0.0", "--port", "9000"]

# The service (the default target, last): api, worker, admin CLI and migrations; pick the role
# with the command.
FROM runtime-base AS service

COPY --from=build-service /opt/venv /opt/venv

# alembic runs from here: `alembic upgrade head` finds alembic.ini in the working directory.
COPY alembic.ini ./
COPY migrations ./migrations

USER 10001:10001

EXPOSE 8000

# No HEALTHCHECK here: the same image runs the worker and the migrations (compose's one-shot
# migrate, the Kubernetes pods' init containers), which serve no HTTP. docker-compose.yml gives the api service its own healthcheck on /healthz.
CMD ["relight-api", "--host", "0.0.0.0", "--port", "8000"]
