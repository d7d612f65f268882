# The replayer image: the same entrypoint as `python -m runner` locally.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY runner ./runner
RUN pip install --no-cache-dir -c constraints.txt . \
    && useradd --create-home --uid 10001 replayer

USER replayer
WORKDIR /home/replayer
ENTRYPOINT ["python", "-m", "runner"]
CMD ["--help"]
