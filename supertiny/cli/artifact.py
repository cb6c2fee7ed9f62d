"""Commands on artifacts a stage wrote: ``verify`` (and the manifest lines ``inspect`` shows)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .core import _human, main


def _files(n: int, size: int) -> str:
    return f"{n} file{'' if n == 1 else 's'}, {_human(size, 'B')}"


def manifest_rows(artifact: Path) -> tuple[list[tuple[str, str]], dict[str, Any] | None]:
    """``inspect``'s lines about ``artifact``'s manifest, and the manifest for ``--json`` (none: no rows)."""
    from ..manifest import ManifestError, manifest_path, read_manifest

    try:
        m = read_manifest(artifact)
    except ManifestError as exc:  # an older supertiny's report: describe the model all the same
        return [("manifest", f"unreadable: {exc}")], {"error": str(exc)}
    if m is None:
        return [], None
    return [
        ("manifest", f"{manifest_path(artifact).name}: {m.stage} v{m.stage_version}, supertiny "
                     f"{m.supertiny_version}, {m.created}"),
        ("made_from", f"{m.source['path']} " + (f"(sha256 {m.source['sha256'][:16]}...)" if m.source.get("sha256")
                                                else "(a server: nothing to hash)")),
        ("files", f"{_files(len(m.files), m.bytes)} with sha256 (`supertiny verify` re-checks them)"),
    ], m.to_dict()


@main.command()
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def verify(ctx: click.Context, path: str, as_json: bool) -> None:
    """Re-hash PATH (an artifact a supertiny stage wrote) against its manifest.

    Exit 0 when every listed file matches, 1 when one differs, is missing or is not
    listed (the files are named), 2 when PATH has no manifest.
    """
    from ..manifest import verify_artifact

    r = verify_artifact(path)
    m = r.manifest
    if as_json:
        click.echo(json.dumps(r.to_dict(), indent=2))
    elif r.ok:
        click.echo(f"OK {r.artifact}: {_files(len(m.files), m.bytes)} match the manifest "
                   f"({m.stage} v{m.stage_version}, supertiny {m.supertiny_version}, {m.created})")
    else:
        problems = [f"{what}: {', '.join(names)}" for what, names in
                    (("modified", r.mismatched), ("missing", r.missing), ("not in the manifest", r.unlisted))
                    if names]
        click.echo(f"FAILED {r.artifact}: {'; '.join(problems)}")
    if not r.ok:
        ctx.exit(1)
