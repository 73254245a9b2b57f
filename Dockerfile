# The relay and the mock provider (compose.yaml runs both from this image:
# `relay serve` and `relay mock`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Metadata first: the dependency layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip install . \
    && useradd --system --uid 10001 --no-create-home relay

USER relay
EXPOSE 8000 8100
ENTRYPOINT ["relay"]
CMD ["serve"]
