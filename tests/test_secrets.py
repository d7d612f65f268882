"""No secret a user hands the tool ends up in a log, manifest or report it writes."""
from __future__ import annotations

import re


from conftest import run_cli

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL21sLmF6dXJlLmNvbSJ9.c2VjcmV0LXNpZ25hdHVyZS0xMjM0"
PASSWORD = "hunter2-pa55word"
PATTERNS = [
    re.compile(r"sig=[A-Za-z0-9%+/=]{10,}"),
    re.compile(r"AccountKey=[A-Za-z0-9+/=]{10,}"),
    re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
    re.compile(re.escape(PASSWORD)),
]


def test_full_migration_writes_no_secrets(servers, unique, tmp_path):
    source, target = servers
    demo = tmp_path / "demo"
    assert run_cli("demo", "--out", str(demo), cwd=tmp_path).returncode == 0
    # Credentials in the URI (basic auth) and a bearer token in the environment: the server
    # ignores both, the tool must not repeat either.
    with_password = source.uri.replace("http://", f"http://admin:{PASSWORD}@")
    env = {"MLFLOW_TRACKING_TOKEN": TOKEN}
    steps = [
        ("migrate", "--source", str(demo), "--target", with_password, "--workspace", f"secret-{unique}", "--verbose"),
        ("extract", "--source", with_password, "--out", str(tmp_path / "manifest"), "--workspace", f"secret-{unique}",
         "--experiments", "demo-*", "--verbose"),
        ("replay", "--manifest", str(tmp_path / "manifest"), "--target", str(tmp_path / "local")),
        ("verify", "--source", with_password, "--target", str(tmp_path / "local"), "--experiments", "demo-*",
         "--workspace", f"secret-{unique}", "--report", str(tmp_path / "report.json")),
        ("migrate", "--source", "http://admin:" + PASSWORD + "@127.0.0.1:9", "--target", str(tmp_path / "x")),
    ]
    outputs = []
    for args in steps:
        result = run_cli(*args, cwd=tmp_path, env=env)
        outputs += [result.stdout, result.stderr]
    assert "cannot reach MLflow server http://127.0.0.1:9" in outputs[-1]
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".log", ".json", ".jsonl")]
    assert any(p.name == "manifest.json" for p in written) and any(p.suffix == ".log" for p in written)
    for text, where in [(p.read_text(errors="replace"), str(p)) for p in written] + [(o, "output") for o in outputs]:
        for pattern in PATTERNS:
            assert not pattern.search(text), f"{pattern.pattern} found in {where}"
