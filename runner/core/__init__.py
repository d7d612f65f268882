"""Core: records, errors and exit codes, retry policy, logging, progress, filters. Imports nothing of ours."""
