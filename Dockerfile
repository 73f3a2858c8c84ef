# calsync: API, feeds and scheduler in one image. Scale out with more `calsync worker`
# containers against one PostgreSQL database (docs/scaling.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY src ./src
COPY connectors ./connectors
RUN pip install --no-cache-dir '.[postgres]' \
    && useradd --system --home /app calsync \
    && mkdir -p /app/var && chown calsync /app/var

USER calsync
EXPOSE 8080
# Settings come from the environment: CALSYNC_SECRET_KEY (required: there is no built-in
# secret, and `calsync serve` on 0.0.0.0 refuses to start without one; a mounted
# CALSYNC_CONFIG file with [security] secret_key works too), CALSYNC_DATABASE_URL,
# CALSYNC_BASE_URL.
CMD ["sh", "-c", "calsync db upgrade && exec calsync serve --host 0.0.0.0 --port 8080"]
