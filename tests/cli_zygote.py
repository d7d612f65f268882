"""A fork server ("zygote") for the tests' CLI runs: `python -m runner ARGS` without paying the
interpreter's start-up and the ~1.5-2.5 s of CPU `import mlflow` (+ azure-ai-ml) costs each time.

One warm process per pytest worker (and per start-up environment, below) imports the CLI and its
heavy libraries once, exactly as `runner.cli.main` would have them, then forks one child per
request. The child is a real, separate process (own pid, killed with SIGKILL on timeout) running
the real CLI code through `runpy`, as `-m` does; it exits through Python's own finalization
(non-daemon threads joined, atexit handlers run, buffered files flushed), so exit codes and
tracebacks are Python's: SystemExit(n) -> n, an uncaught exception -> traceback on stderr and 1, a
signal -> a negative returncode seen by the caller. Only interpreter start-up and imports are
shared; state never flows from a child back to the zygote, and the zygote never runs `main()`.

What a fork cannot reproduce, and what is done about it (see `fresh_interpreter_needed` and
`startup_signature`):
- Variables read while the interpreter starts or while the preloaded modules import: a value
  differing from the zygote's would leave a cached answer in the child. PYTHON* variables differing
  from the pytest worker's own -> a real `python -m runner` (rare: a test that means to change the
  interpreter); the other import-time variables -> a zygote started with that environment (the
  azure tests point SSL_CERT_FILE at their fake's CA, which aiohttp's import-time SSL context
  reads; a module's dozen calls share one zygote).
- A module in the request's cwd named like a preloaded top-level module (`python -m` puts the cwd
  first on sys.path) -> a real process.
- The str hash seed is the zygote's, shared by its children (a fresh interpreter draws its own).
- numpy is never imported (runner.cli hides it, and the zygote installs the same finder before
  mlflow), so no OpenBLAS threads exist to be lost in a fork; fork_child asserts a single thread.
  `random` is reseeded in a forked child by Python (os.register_at_fork) and tempfile's names by
  pid change; tests/test_cli_zygote.py checks both.

Python facts relied on: runpy.run_module(alter_sys=True) sets sys.argv[0] and __main__ like `-m`
(https://docs.python.org/3/library/runpy.html); os.fork in a process with one thread is safe
(https://docs.python.org/3/library/os.html#os.fork); socket.send_fds/recv_fds pass descriptors
over a Unix socket (3.9+); os.pidfd_open tells when a child exits without SIGCHLD handlers (Linux 5.3+).
"""
from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OFF_VARIABLE = "REPLAYER_TEST_NO_ZYGOTE"

# What the CLI imports at start-up of a command (measured: `python -X importtime` and sys.modules at
# exit of migrate/verify/extract against mlflow servers and the AzureML fake). runner.cli first: its
# _NotInImage finder goes in before mlflow, as main() puts it, so mlflow imports without pandas.
PRELOAD = ("runner.cli", "runner.ends", "mlflow", "mlflow.tracking", "mlflow.store.tracking.rest_store",
           "azure.identity", "azure.storage.blob", "azureml.mlflow", "azure.ai.ml")

# What runner.core.retry.configure() and runner.core.logs.quiet_libraries() setdefault before any
# command imports mlflow; the zygote imports under the same values (test_cli_zygote checks the list).
CLI_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1.0", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_LOGGING_LEVEL": "WARNING", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}

# Read before any Python code runs, or by C code at import (not through os.environ): always compared.
# Locale and TZ: the interpreter's start-up; SSL_CERT_*: OpenSSL, for aiohttp's module-level SSL
# contexts (aiohttp/connector.py); LD_*/MALLOC_*: the loader and libc.
STARTUP_VARIABLES = ("LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR",
                     "LD_PRELOAD", "LD_LIBRARY_PATH", "MALLOC_ARENA_MAX")

# Read at import but cached nowhere a command uses (checked by reading the readers):
# PYTEST_CURRENT_TEST and the CI markers: mlflow/telemetry/utils.py, telemetry the CLI turns off;
# PATH: platform.platform() looking for `uname` (mlflow/telemetry/schemas.py), while the tests
# prepend a fake `az`.
IGNORED_READS = {"PYTEST_CURRENT_TEST", "PATH", "b:PATH"}
# Modules that go through the whole environment at import, and the prefix of what they keep:
# wsgiref.handlers copies it for CGI handlers (never used by the CLI); tqdm.utils.envwrap reads TQDM_*.
WHOLE_ENVIRONMENT_READERS = {"wsgiref.handlers": None, "tqdm.utils": "TQDM_"}


# -- the rule -----------------------------------------------------------------------------------

def fresh_interpreter_needed(env: dict, cwd: Path, facts: dict) -> str | None:
    """Why this request must run as a real `python -m runner` (None: a fork reproduces it).

    A forked child shares what the interpreter and the preloaded modules decided at start-up. The
    interpreter's own variables (PYTHON*: path, hash seed, flags, warnings, io encoding) differing from
    the zygotes' mean the test wants another interpreter: run one. A module in the cwd named like a
    preloaded one would have shadowed it (`-m` puts the cwd first on sys.path): run one. Other import-time
    variables are handled by `startup_signature` (a zygote per value), not here."""
    zygotes = facts["python_env"]
    differing = sorted(k for k in {*env, *zygotes} if k.startswith("PYTHON") and env.get(k) != zygotes.get(k))
    if differing:
        return f"interpreter variables differ: {', '.join(differing)}"
    here = str(cwd.resolve())
    shadows = sorted(name for name in module_names_in(cwd) if name in facts["modules"]
                     and not (facts["modules"][name] + os.sep).startswith(here + os.sep))
    if shadows:
        return f"{cwd} holds modules named like preloaded ones: {', '.join(shadows)}"
    return None


def startup_signature(env: dict, facts: dict) -> tuple:
    """The values a zygote's imports saw, as the CLI would have them (its defaults under the env's)."""
    effective = {**CLI_ENV_DEFAULTS, **env}
    prefixed = {k for k in effective if k.startswith(tuple(facts["env_prefixes"]))} if facts["env_prefixes"] else set()
    return tuple((k, effective.get(k)) for k in sorted({*facts["env_keys"], *STARTUP_VARIABLES, *prefixed}))


def module_names_in(folder: Path) -> set[str]:
    """Top-level module names a folder offers on sys.path: packages, .py, compiled extensions."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return set()
    return {e.partition(".")[0] for e in entries if e.endswith((".py", ".pyc", ".so")) or (folder / e / "__init__.py").exists()}


# -- the zygote process ---------------------------------------------------------------------------

def preload() -> dict:
    """Import what the CLI imports, under its env defaults, recording the environment the imports
    read and wrote; returns those facts for the client's rule."""
    launch_env = dict(os.environ)
    for key, value in CLI_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    with recorded_environment_reads() as reads:
        import importlib

        cli = importlib.import_module("runner.cli")
        sys.meta_path.insert(0, cli._NotInImage())  # as main() does before any command imports mlflow
        for name in PRELOAD[1:]:
            importlib.import_module(name)
    written = {k: v for k, v in os.environ.items() if launch_env.get(k) != v and CLI_ENV_DEFAULTS.get(k) != v}
    os.environ.clear()
    os.environ.update(launch_env)
    unknown_copies = sorted(reads["*"] - set(WHOLE_ENVIRONMENT_READERS))
    if unknown_copies:  # a module kept a copy of the whole environment: every variable would count
        raise RuntimeError(f"modules copied the whole environment at import: {unknown_copies}")
    assert "numpy" not in sys.modules, "the CLI hides numpy (runner.cli.NOT_IN_IMAGE); the zygote must too"
    modules = {name: str(Path(getattr(module, "__file__", None) or "").parent) for name, module in list(sys.modules.items())
               if "." not in name and getattr(module, "__file__", None)}
    prefixes = sorted(filter(None, (WHOLE_ENVIRONMENT_READERS[m] for m in reads["*"])))
    python_env = {k: v for k, v in launch_env.items() if k.startswith("PYTHON")}
    return {"env_keys": sorted(reads["keys"] - IGNORED_READS), "env_prefixes": prefixes, "python_env": python_env, "written": written, "modules": modules, "pid": os.getpid()}


class recorded_environment_reads:
    """Every os.environ key read (and whole-environment iteration, by module) inside the block."""

    def __enter__(self):
        self.reads = {"keys": set(), "*": set()}
        cls, reads = os._Environ, self.reads
        self.saved = cls.__getitem__, cls.__iter__
        getitem, iterate = self.saved

        def recorded_getitem(environ, key):
            # A whole-environment reader's items() comes here key by key: its keys count by its prefix.
            if reader_module() not in WHOLE_ENVIRONMENT_READERS:
                reads["keys"].add(key if isinstance(key, str) else "b:" + key.decode())
            return getitem(environ, key)

        def recorded_iter(environ):
            reads["*"].add(reader_module())
            return iterate(environ)

        cls.__getitem__, cls.__iter__ = recorded_getitem, recorded_iter
        return self.reads

    def __exit__(self, *exc):
        os._Environ.__getitem__, os._Environ.__iter__ = self.saved


def reader_module() -> str:
    """The module whose code is iterating os.environ (past os, collections.abc and this file)."""
    frame = sys._getframe(2)
    while frame and frame.f_globals.get("__name__") in ("os", "_collections_abc", "collections.abc", __name__, "__main__"):
        frame = frame.f_back
    return frame.f_globals.get("__name__", "?") if frame else "?"


def serve(listener: socket.socket) -> dict:
    """Answer requests until stdin closes (the worker ended). Returns only in a forked child, with
    its request: the caller then runs the CLI in that child."""
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "stdin")
    running: dict[int, tuple[socket.socket, int]] = {}  # pidfd -> (the caller's connection, child pid)
    while True:
        for key, _ in selector.select():
            if key.data == "stdin" and not os.read(sys.stdin.fileno(), 4096):
                os._exit(0)  # the worker closed its end or died; children already running carry on
            elif key.data == "accept":
                conn, _ = listener.accept()
                try:
                    request = read_request(conn)
                except (ConnectionError, ValueError) as broken:
                    print(f"dropped a request: {broken}", file=sys.stderr, flush=True)
                    conn.close()
                    continue
                child = fork_child(request)
                if child == 0:  # the CLI process: nothing of the serving stays open in it
                    for other, _ in running.values():
                        other.close()
                    for pidfd in running:
                        os.close(pidfd)
                    selector.close()
                    listener.close()
                    conn.close()
                    return request
                pidfd = os.pidfd_open(child)
                running[pidfd] = conn, child
                selector.register(pidfd, selectors.EVENT_READ, "exit")
                conn.sendall(f"pid {child}\n".encode())
            elif key.data == "exit":
                conn, child = running.pop(key.fd)
                _, status = os.waitpid(child, 0)
                selector.unregister(key.fd)
                os.close(key.fd)
                try:
                    conn.sendall(f"exit {status}\n".encode())
                except OSError:
                    pass  # the caller gave up (its own process ended)
                conn.close()


def read_request(conn: socket.socket) -> dict:
    """A request: the two output descriptors, then a length-prefixed JSON body."""
    header, fds, _, _ = socket.recv_fds(conn, 8, 2)
    if len(fds) != 2:
        raise ConnectionError(f"a request came with {len(fds)} descriptors, not stdout and stderr")
    header += receive(conn, 8 - len(header))
    (length,) = struct.unpack("!Q", header)
    request = json.loads(receive(conn, length))
    request["stdout_fd"], request["stderr_fd"] = fds
    return request


def receive(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the caller hung up mid-request")
        data += chunk
    return data


def fork_child(request: dict) -> int:
    """fork(); the parent drops its copies of the output files."""
    assert threading.active_count() == 1, f"threads in the zygote: {threading.enumerate()}"  # fork copies only the caller
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(request["stdout_fd"])
        os.close(request["stderr_fd"])
    return pid


def become_cli(request: dict, facts: dict) -> None:
    """In the forked child: the process `python -m runner ARGS` in `cwd` with exactly `env` would be
    (plus what the preloaded imports wrote into the environment, as they would have), then run it."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update({**{k: v for k, v in facts["written"].items() if k not in request["env"]}, **request["env"]})
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(request["stdout_fd"], 1)
    os.dup2(request["stderr_fd"], 2)
    for fd in (null, request["stdout_fd"], request["stderr_fd"]):
        os.close(fd)
    sys.path[0] = os.getcwd()  # `-m` puts the cwd first
    sys.argv = ["-m", *request["args"]]
    code = run_as_main()
    os._exit(shut_down(code))


def run_as_main() -> int:
    """runner/__main__.py as `python -m runner` runs it; the exit code Python's top level would give:
    SystemExit's code (None -> 0, a non-int printed and 1), an uncaught exception's traceback and 1."""
    import runpy

    try:
        runpy.run_module("runner", run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        if stop.code is None:
            return 0
        if isinstance(stop.code, int):
            return stop.code
        print(stop.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # Python dies of SIGINT on an uncaught ^C
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        return 1
    return 0


def shut_down(code: int) -> int:
    """What Py_FinalizeEx does that a command can notice: wait for non-daemon threads, run atexit
    handlers (loguru's sinks, logging.shutdown, mlflow's end_run), flush stdout and stderr (a failed
    flush of stdout exits 120). Not done: tearing down the modules of a 200 MB heap, which costs ~0.5 s
    per process in page copies and frees nothing the OS would not; so an object still open at exit is
    not finalized (a file the CLI left unclosed would lose its buffer: the CLI closes what it writes)."""
    import atexit

    threading._shutdown()
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        code = 120
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    return code


def zygote_main(path: str) -> None:
    os.chdir(ROOT)
    sys.path[0] = str(ROOT)  # as `python -m runner` from the repository root: not tests/
    facts = preload()
    import gc

    gc.freeze()  # the preloaded objects stay out of the children's collections: no page copies for them
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    print(json.dumps(facts), flush=True)  # ready: the socket answers from now on
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the caller stopped reading the handshake pipe
    request = serve(listener)
    become_cli(request, facts)


# -- the client, in the pytest worker -----------------------------------------------------------

class Zygote:
    """One zygote process, started with `env`, serving on a socket in `folder`."""

    def __init__(self, env: dict, folder: Path):
        number = len(list(folder.glob("*.log")))
        self.path = str(folder / f"z{number}.sock")
        self.log = open(folder / f"z{number}.log", "wb")
        self.process = subprocess.Popen([sys.executable, __file__, self.path], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.log)
        line = self.process.stdout.readline()
        self.process.stdout.close()
        if not line:
            self.process.wait(30)
            raise RuntimeError(f"the CLI zygote did not start: {Path(self.log.name).read_text(errors='replace')[-3000:]}")
        self.facts = json.loads(line)
        self.users = 0  # runs in flight: an evicted zygote stops when its last run ends
        self.evicted = False

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        Path(self.path).unlink(missing_ok=True)

    def run(self, args: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "runner", *args]
        deadline = time.monotonic() + timeout
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
                socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(self.path)
            body = json.dumps({"args": list(args), "cwd": str(cwd), "env": env}).encode()
            socket.send_fds(conn, [struct.pack("!Q", len(body))], [out.fileno(), err.fileno()])
            conn.sendall(body)
            answers = conn.makefile("rb")
            pid = int(expect(answers, "pid"))
            conn.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                status = int(expect(answers, "exit"))
            except (socket.timeout, TimeoutError):
                os.kill(pid, signal.SIGKILL)  # as subprocess.run does on timeout
                conn.settimeout(60)
                answers = conn.makefile("rb")
                expect(answers, "exit")  # reaped by the zygote: nothing is left behind
                raise subprocess.TimeoutExpired(cmd, timeout, output=text_of(out), stderr=text_of(err)) from None
            return subprocess.CompletedProcess(cmd, os.waitstatus_to_exitcode(status), text_of(out), text_of(err))


def expect(answers, word: str) -> str:
    line = answers.readline().decode()
    if not line.startswith(word + " "):
        raise RuntimeError(f"the CLI zygote answered {line!r} where {word!r} was due (did it die?)")
    return line.split()[1]


def text_of(file) -> str:
    """What subprocess.run(text=True) makes of captured bytes: the locale's encoding, universal newlines."""
    file.seek(0)
    data = file.read().decode(subprocess._text_encoding())
    return data.replace("\r\n", "\n").replace("\r", "\n")


class ZygotePool:
    """The worker's zygotes, one per start-up signature, the two most recently used kept."""

    KEEP = 2

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="cli-zygote-"))
        self.zygotes: dict[tuple, Zygote] = {}
        self.facts: dict | None = None  # what the imports read, from the first zygote
        self.lock = threading.Lock()
        self.counts = {"forked": 0, "fallback": 0, "zygotes": 0}
        self.why: list[str] = []  # each fallback's reason, each later zygote's differing variables

    def first_facts(self) -> dict:
        """The first zygote's facts; it starts with the worker's own environment, the one most calls use."""
        if self.facts is None:
            self.first_env = dict(os.environ)
            zygote = self.start(self.first_env)
            self.facts = zygote.facts
            self.zygotes[startup_signature(dict(os.environ), self.facts)] = zygote
        return self.facts

    def zygote_for(self, env: dict) -> Zygote:
        signature = startup_signature(env, self.facts)
        zygote = self.zygotes.pop(signature, None)
        if zygote is None or not zygote.alive():
            first = dict(startup_signature(self.first_env, self.facts))
            self.why.append("zygote for " + ",".join(k for k, v in signature if first.get(k) != v))
            zygote = self.start(env)
        self.zygotes[signature] = zygote  # most recently used last
        while len(self.zygotes) > self.KEEP:
            oldest = self.zygotes.pop(next(iter(self.zygotes)))
            oldest.evicted = True
            if not oldest.users:
                oldest.stop()
        return zygote

    def start(self, env: dict) -> Zygote:
        self.counts["zygotes"] += 1
        return Zygote(env, self.folder)

    def run(self, args, cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
        with self.lock:  # run_cli may be called from several threads at once; the runs themselves overlap
            reason = fresh_interpreter_needed(env, cwd, self.first_facts())
            zygote = None if reason else self.zygote_for(env)
            self.counts["fallback" if reason else "forked"] += 1
            if reason:
                self.why.append(reason)
            if zygote:
                zygote.users += 1
        if zygote is None:
            return real_run(args, cwd, env, timeout)
        try:
            return zygote.run(list(args), cwd, env, timeout)
        finally:
            with self.lock:
                zygote.users -= 1
                if zygote.evicted and not zygote.users:
                    zygote.stop()

    def stop(self) -> None:
        for zygote in self.zygotes.values():
            zygote.stop()
        self.zygotes.clear()
        shutil.rmtree(self.folder, ignore_errors=True)  # sockets and the zygotes' logs
        report = os.environ.get("REPLAYER_TEST_ZYGOTE_STATS")
        if report:  # for comparing runs: how many CLI calls were forked, fell back, zygotes started
            with open(report, "a") as out:
                out.write(json.dumps({"pid": os.getpid(), **self.counts, "why": self.why}) + "\n")


def real_run(args, cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """The real thing: a fresh `python -m runner` process."""
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


if __name__ == "__main__":
    zygote_main(sys.argv[1])
