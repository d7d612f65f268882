"""Installed size of the image's runtime dependencies (what the Dockerfile's pip layer holds).

Installs environments/requirements.txt with constraints.txt into a temporary folder with
`pip install --target` (with bytecode, as `docker build` does, and without), measures it, and
imports the replayer against that folder alone (`python -m runner --help` in an empty venv).
`--compare-full` also measures the same set with full `mlflow` instead of mlflow-skinny.
Results: a table on stdout and bench-results/image_size.json.

    python bench/image_size.py [--compare-full] [--top 12]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "environments" / "requirements.txt"
CONSTRAINTS = ROOT / "constraints.txt"
RESULTS = ROOT / "bench-results"


def folder_bytes(path: Path) -> tuple[int, int]:
    """(apparent bytes, files) under path."""
    total = files = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            file = Path(dirpath, name)
            if not file.is_symlink():
                total += file.stat().st_size
                files += 1
    return total, files


def install(requirements: Path, target: Path, compile_bytecode: bool) -> float:
    started = time.monotonic()
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--target", str(target), "-r", str(requirements), "-c", str(CONSTRAINTS)]
    if not compile_bytecode:
        command.append("--no-compile")
    subprocess.run(command, check=True)
    return time.monotonic() - started


def largest(target: Path, top: int) -> list[tuple[str, int]]:
    sizes = []
    for entry in target.iterdir():
        if entry.name.endswith((".dist-info", ".pth")) or entry.name == "bin":
            continue
        size = folder_bytes(entry)[0] if entry.is_dir() else entry.stat().st_size
        sizes.append((entry.name, size))
    return sorted(sizes, key=lambda item: -item[1])[:top]


def smoke(target: Path, scratch: Path) -> bool:
    """`python -m runner --help` with nothing but `target` and the repository on the path."""
    bare = scratch / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    env = {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{ROOT}", "REPLAYER_LOG_DIR": str(scratch / "logs")}
    done = subprocess.run([str(bare / "bin" / "python"), "-m", "runner", "--help"], env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return done.returncode == 0


def measure(requirements: Path, label: str, top: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="replayer-image-") as scratch:
        scratch = Path(scratch)
        plain, compiled = scratch / "plain", scratch / "compiled"
        seconds = install(requirements, plain, compile_bytecode=False)
        plain_bytes, plain_files = folder_bytes(plain)
        install(requirements, compiled, compile_bytecode=True)
        compiled_bytes, _ = folder_bytes(compiled)
        packages = sum(1 for entry in plain.iterdir() if entry.name.endswith(".dist-info"))
        return {
            "set": label,
            "packages": packages,
            "files": plain_files,
            "mb_source_only": round(plain_bytes / 1e6, 1),
            "mb_with_bytecode": round(compiled_bytes / 1e6, 1),
            "install_seconds": round(seconds, 1),
            "runner_help_ok": smoke(plain, scratch),
            "largest_mb": {name: round(size / 1e6, 1) for name, size in largest(plain, top)},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare-full", action="store_true", help="also measure full mlflow instead of mlflow-skinny")
    parser.add_argument("--top", type=int, default=12, help="largest packages to list")
    args = parser.parse_args()

    results = [measure(REQUIREMENTS, "image (environments/requirements.txt)", args.top)]
    if args.compare_full:
        with tempfile.TemporaryDirectory() as scratch:
            full = Path(scratch) / "full.txt"
            lines = [line for line in REQUIREMENTS.read_text().splitlines()
                     if line.strip() and not line.startswith("#")
                     and not line.lower().startswith(("sqlalchemy", "alembic"))]
            full.write_text("\n".join(line.replace("mlflow-skinny==", "mlflow==") for line in lines) + "\n")
            results.append(measure(full, "same with full mlflow", args.top))

    print(f"{'set':<40} {'pkgs':>5} {'files':>6} {'MB':>7} {'MB+pyc':>7} {'help':>5}")
    for r in results:
        print(f"{r['set']:<40} {r['packages']:>5} {r['files']:>6} {r['mb_source_only']:>7} {r['mb_with_bytecode']:>7} "
              f"{'ok' if r['runner_help_ok'] else 'FAIL':>5}")
    print("largest (MB, image set):", ", ".join(f"{k} {v}" for k, v in results[0]["largest_mb"].items()))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "image_size.json").write_text(json.dumps({"python": sys.version.split()[0], "results": results}, indent=2))
    if not all(r["runner_help_ok"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
