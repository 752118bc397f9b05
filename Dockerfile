# turnout image: the router worker and the mock backend (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the package needs (keeps .venv, caches and tests out of the image).
# README.m[d]: copied if present, no error if not.
COPY pyproject.toml README.m[d] ./
COPY turnout ./turnout
COPY streams ./streams
COPY agents ./agents
COPY schemas ./schemas
RUN pip install .

COPY config ./config

CMD ["turnout", "--help"]
