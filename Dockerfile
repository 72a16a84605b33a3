# asgiws in a container: `docker build -t asgiws . && docker run -p 8000:8000 asgiws`
# Serve your own app by mounting or copying it and passing its import string:
#   docker run -p 8000:8000 -v "$PWD:/srv" -w /srv asgiws myapp:app --host 0.0.0.0 --workers 4

# Build stage: the slim image has no compiler, and without one pip would skip
# the C masking helper (clients mask every frame; the pure-Python twin unmasks
# large payloads several times slower). Compile it here, ship only the wheel.
FROM python:3.12-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . /src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels /src

FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# The default CMD's app; asgiws itself comes from the wheel, not from /app.
COPY examples /app/examples
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin asgiws
USER asgiws

EXPOSE 8000
# What the HEALTHCHECK requests: set them for an app that listens elsewhere or
# has no / route, at build time (docker build --build-arg HEALTHCHECK_PATH=/healthz)
# or at run time (docker run -e HEALTHCHECK_PATH=/healthz); docs/deployment.md.
ARG HEALTHCHECK_PORT=8000
ARG HEALTHCHECK_PATH=/
ENV HEALTHCHECK_PORT=${HEALTHCHECK_PORT} \
    HEALTHCHECK_PATH=${HEALTHCHECK_PATH}
# Checks the whole path: a worker's event loop answers HTTP on the published
# port. Healthy on 2xx (redirects followed); a 4xx/5xx or no answer is not.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s%s' % (os.environ['HEALTHCHECK_PORT'], os.environ['HEALTHCHECK_PATH']), timeout=4)"]

# Exec form: asgiws is PID 1 and gets `docker stop`'s SIGTERM itself, so
# workers drain gracefully (WebSockets get 1001) within the 10 s stop timeout.
ENTRYPOINT ["asgiws"]
CMD ["examples.hello:app", "--host", "0.0.0.0", "--port", "8000"]
