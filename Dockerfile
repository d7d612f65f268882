# The replayer image: `python -m runner` as in the venv, runtime dependencies only, non-root.
# Built by `docker build .` (scripts/local-run.sh) and by Azure ML from environments/replayer.yml.
# Runtime set: environments/requirements.txt (mlflow-skinny, not full mlflow), every transitive
# package pinned by constraints.txt, the same pins the test suite runs on.
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

# Dependencies first: this layer is reused until the pins change.
COPY constraints.txt environments/requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt -c constraints.txt

# The package itself, without its dependency list (that names full mlflow for the dev venv), with
# the component YAMLs as package data: `replayer submit` in the image finds replay_step.yml.
COPY pyproject.toml README.md ./
COPY runner ./runner
COPY components ./runner/components
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build runner.egg-info azureml_replayer.egg-info \
    && useradd --create-home --uid 10001 --user-group replayer

USER 10001
WORKDIR /home/replayer
ENTRYPOINT ["python", "-m", "runner"]
CMD ["--help"]
