"""Files: the artifact copy engine and the stores it copies between.

Imports nothing but runner.core. The ends (runner.mlflow, runner.azureml) add their stores through
`runner.files.stores.register` the way rclone's backends register with its fs layer.
"""
