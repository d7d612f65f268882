"""The Azure ML end: credentials and auth, the AzureML source, run history and blob stores, the
pipeline target, the replay_step body and wait. Uses the MLflow end: Azure ML's tracking endpoint
speaks MLflow."""
