"""Replay AzureML / MLflow job history from one workspace into another."""

__version__ = "0.1.0"
