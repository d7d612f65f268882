"""The MLflow end: tracking URIs, the MLflow source (bulk metric reads), the direct target, the
model registry, sync state and the MLflow artifact store. Never imports the Azure ML end."""
