"""Verify's registry part (`verify --models`): versions, aliases, stages, tags, run links and files
of the copied models against the source's."""
from __future__ import annotations


from pathlib import Path

from loguru import logger

from runner.engine.ledger import COMPLETE, Ledger
from runner.mlflow.model_copy import pair, source_registry
from runner.mlflow.registry import (
    Files, Registry, VersionRecord, checksums, reason, target_aliases, target_stage, user_tags,
    version_lineage,
)


def compare_models(source, target, ledger: Ledger, patterns: list[str], scratch: Path) -> tuple[int, list]:
    """Every selected source model against the target: (models compared, differences)."""
    from runner.engine.verify import Difference, show

    reader, writer = source_registry(source), Registry(target.client)
    workspace = source.workspace
    out: list[Difference] = []
    models = reader.models(patterns)
    for model in models:
        where = f"model:{model.name}"
        diff = lambda what, a, b, at=where: out.append(Difference(at, model.name, what, show(a), show(b)))  # noqa: E731
        try:
            have = writer.model(model.name)
            if have is None:
                diff("model", "present", "missing")
                continue
            if model.description != have.description:
                diff("model_description", model.description, have.description)
            if user_tags(model.tags) != user_tags(have.tags):
                diff("model_tags", user_tags(model.tags), user_tags(have.tags))
            target_versions = writer.versions(model.name)
            ours, placeholders, duplicates, foreign = pair(target_versions, workspace)
            if duplicates or placeholders:
                diff("versions", "one copy each", f"{len(duplicates)} duplicates, {len(placeholders)} placeholders")
            mapped, previous = {}, 0
            versions = reader.versions(model.name)
            for v in versions:
                at = f"{where}/v{v.version}"
                copy = ours.get(v.version)
                if copy is None:
                    diff("version", "present", "missing", at)
                    continue
                mapped[v.version] = copy.version
                files, copied = reader.locate(v), writer.locate(copy)
                if copy.tags.get(COMPLETE) != v.fingerprint():
                    diff("version", "complete", "incomplete or outdated (rerun migrate --models)", at)
                pairs = [
                    ("description", v.description, copy.description),
                    ("tags", user_tags(v.tags), user_tags(copy.tags)),
                    ("stage", v.stage, target_stage(copy)),
                    ("lineage", version_lineage(v, workspace), {k: copy.tags.get(k) for k in version_lineage(v, workspace)}),
                    ("run_link", expected_run_link(reader, ledger, v), copy.run_id or None),
                    # runs:/, an artifact URI (whose scheme is the target store's) or models:/; files
                    # from elsewhere are uploaded into a logged model: models:/ on the target.
                    ("source_form", "models" if files.kind == "other" else files.form, copied.form),
                ]
                if not foreign:  # the target model holds only this source's versions: numbers must match
                    pairs.append(("number", v.version, copy.version))
                if int(copy.version) <= previous:
                    pairs.append(("order", f"after v{previous}", f"v{copy.version}"))
                previous = int(copy.version)
                for what, a, b in pairs:
                    if a != b:
                        diff(what, a, b, at)
                out.extend(compare_files(reader, writer, files, copied, copy.model, scratch, at))
            for original, copy in ours.items():
                if original not in {v.version for v in versions}:
                    diff("version", "", f"target only: v{copy.version} (from v{original})", f"{where}/v{original}")
            want_aliases = {a: mapped.get(n, f"(copy of v{n})") for a, n in model.aliases.items()}
            ours_numbers = {c.version for c in ours.values()}
            have_aliases = {a: n for a, n in target_aliases(have).items() if a in model.aliases or n in ours_numbers}
            if want_aliases != have_aliases:
                diff("aliases", want_aliases, have_aliases)
        except Exception as error:  # noqa: BLE001 - a read failure is a difference, not a crash
            logger.opt(exception=error).debug("verify failed on model {}", model.name)
            diff("error", "", reason(error))
    return len(models), out


def expected_run_link(reader: Registry, ledger: Ledger, v: VersionRecord) -> str | None:
    """The replayed run a copy should link to; None when the source version's run is gone."""
    if not v.run_id:
        return None
    found = ledger.find(v.run_id)
    if found is not None:
        return found.run_id
    return f"(replayed {v.run_id})" if reader.run_artifact_uri(v.run_id) is not None else None


def compare_files(reader: Registry, writer: Registry, files: Files, copied: Files, model: str, scratch: Path, at: str) -> list:
    from runner.engine.verify import Difference, show

    mine = checksums(reader.download(files.uri, scratch))
    theirs = checksums(writer.download(copied.uri, scratch))
    out = []
    for path in sorted(set(mine) | set(theirs)):
        if mine.get(path) != theirs.get(path):
            out.append(Difference(at, model, f"file:{path}", show(mine.get(path)), show(theirs.get(path))))
    return out
