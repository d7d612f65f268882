"""Error classes, each with the exit code the CLI turns it into.

The CLI prints `str(error)` as one line; messages name the thing that is wrong and the fix.
"""

EXIT_OK = 0
EXIT_DIFFERENCES = 1  # verify found differences, or some runs failed to copy
EXIT_USAGE = 2  # bad input: config, manifest, URI, unknown experiment, credentials


class ReplayerError(Exception):
    """Base class: anything the tool raises on purpose."""

    exit_code = EXIT_USAGE


class UsageError(ReplayerError):
    """Bad input from the user: a flag, a config file, a URI."""


class ManifestError(ReplayerError):
    """A manifest folder that cannot be read: missing, truncated, malformed, wrong version."""


class EndpointError(ReplayerError):
    """A tracking store that does not answer or refuses us."""


class ArtifactCopyError(ReplayerError):
    """A file could not be copied or did not arrive intact (the message names it, no secrets)."""

    exit_code = EXIT_DIFFERENCES


class TransientError(ReplayerError):
    """Worth retrying: throttling, timeouts, 5xx."""

    exit_code = EXIT_DIFFERENCES


def first_line(error: BaseException) -> str:
    """An exception's first line: SDK messages run to many lines, ours are one."""
    text = str(getattr(error, "message", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__
