"""Commands on artifacts a stage wrote: ``verify`` (and the manifest lines ``inspect`` shows)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from supertiny.cli.core import human, main
from supertiny.flows.bundle import check_budget
from supertiny.manifest import ManifestError, manifest_path, read_manifest, verify_artifact


def _files(n: int, size: int) -> str:
    return f"{n} file{'' if n == 1 else 's'}, {human(size, 'B')}"


def manifest_rows(artifact: Path) -> tuple[list[tuple[str, str]], dict[str, Any] | None]:
    """``inspect``'s lines about ``artifact``'s manifest, and the manifest for ``--json`` (none: no rows)."""
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
@click.option("--no-bench", is_flag=True, help="A bundle: re-hash only, skip the budget check.")
@click.option("--threads", type=int, default=None,
              help="A bundle: engine threads for the budget check (default: the target's, at most this "
              "machine's cores).")
@click.option("--quick", is_flag=True, help="A bundle: one measured run per prompt length instead of three.")
@click.pass_context
def verify(ctx: click.Context, path: str, as_json: bool, no_bench: bool, threads: int | None, quick: bool) -> None:
    """Re-hash PATH (an artifact a supertiny stage wrote) against its manifest.

    A deployment bundle (`supertiny run`) is then benchmarked on this machine against the
    target in its target.toml (unless --no-bench). Exit 0 when every listed file matches
    (and a bundle meets its budgets), 1 when one differs, is missing or is not listed (the
    files are named) or a budget is missed, 2 when PATH has no manifest.
    """
    r = verify_artifact(path)
    m = r.manifest
    budget = None
    if r.ok and m.stage == "bundle" and not no_bench:
        budget = _bundle_budget(r.artifact, threads, quick, as_json)
    if as_json:
        click.echo(json.dumps({**r.to_dict(), **({"budget": budget} if budget else {})}, indent=2))
        if budget and not budget["passed"]:
            ctx.exit(1)
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
    if budget and not as_json:
        for line in budget_lines(budget):
            click.echo(line)
        if not budget["passed"]:
            ctx.exit(1)


def _bundle_budget(bundle: Path, threads: int | None, quick: bool, as_json: bool) -> dict[str, Any]:
    """The bundle's budget check on this machine (progress on stderr)."""
    def progress(artifact: str, what: str, done: int, total: int) -> None:
        click.echo(f"budget check: [{done}/{total}] {what}", err=True)

    report = check_budget(bundle, threads, quick, progress if not as_json or not sys.stderr.isatty() else None)
    result = report["results"][0]
    return {"target": report["target"]["name"], "passed": report["passed"], "threads": result["threads"],
            "verdicts": result["verdicts"]}


def budget_lines(budget: dict[str, Any]) -> list[str]:
    """A budget check as lines: the verdict, then one line per budget."""
    lines = [f"budget {budget['target']} on this machine ({budget['threads']} threads): "
             f"{'PASS' if budget['passed'] else 'FAIL'}"]
    for v in budget["verdicts"]:
        op = "<=" if v["direction"] == "max" else ">="
        measured = "n/a" if v["measured"] is None else f"{v['measured']:.1f}"
        lines.append(f"  {v['label']:<22} {measured:>9} {v['unit']:<6} {op} {v['limit']:g}  {v['status']}")
    return lines
