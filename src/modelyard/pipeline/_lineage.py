"""Lineage queries: which data, spec and steps produced an artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelyard.errors import StoreError
from modelyard.pipeline._artifacts import sha256_file
from modelyard.pipeline._store import ArtifactRecord, LineageNode, MetadataStore

__all__ = ["resolve_artifact", "lineage_summary", "render_lineage"]


def resolve_artifact(store: MetadataStore, ref: str) -> ArtifactRecord:
    """Find an artifact by file path, numeric id, or SHA-256 prefix (8+ hex characters).

    A file published at the top of a run folder (``runs/<id>/model.onnx``) is found by
    its digest, preferring the artifact recorded in the same run folder.
    """
    path = Path(ref)
    if path.is_file():
        resolved = str(path.resolve())
        found = store.find_artifacts(uri=resolved)
        if found:
            return found[0]
        digest = sha256_file(path)
        found = store.find_artifacts(digest=digest)
        same_run = [a for a in found if Path(a.uri).parent.is_relative_to(path.resolve().parent)]
        if same_run or found:
            return (same_run or found)[0]
        raise StoreError(f"{ref} (sha256 {digest[:12]}) was not produced by any recorded run in {store.describe()}.")
    if ref.isdigit():
        found = store.find_artifacts(artifact_id=int(ref))
        if found:
            return found[0]
        raise StoreError(f"No artifact with id {ref} in {store.describe()}.")
    hexdigits = set("0123456789abcdef")
    key = ref.lower().removeprefix("sha256:")
    if len(key) >= 8 and set(key) <= hexdigits:
        found = store.find_artifacts(digest=key)
        if found:
            return found[0]
        raise StoreError(f"No artifact with digest {key[:16]}… in {store.describe()}.")
    raise StoreError(f"{ref!r} is neither an existing file, an artifact id, nor a SHA-256 prefix; "
                     "give e.g. runs/<run-id>/model.onnx.")


def _walk(node: LineageNode) -> list[LineageNode]:
    out = [node]
    for p in node.parents:
        out.extend(_walk(p))
    return out


def lineage_summary(store: MetadataStore, tree: LineageNode) -> dict[str, Any]:
    """Plain-data answer: the artifact, the data sources, the spec and the steps."""
    nodes = _walk(tree)
    sources: dict[tuple[str, str], dict[str, Any]] = {}
    steps: dict[int, dict[str, Any]] = {}
    runs: dict[str, Any] = {}
    for n in nodes:
        if n.artifact.type == "source":
            sources[(n.artifact.name, n.artifact.digest)] = {"name": n.artifact.name, "uri": n.artifact.uri,
                                                             "sha256": n.artifact.digest, "bytes": n.artifact.size}
        if n.execution is not None:
            e = n.execution
            entry = {"step": e.step, "execution": e.id, "run": e.run_id, "status": e.status,
                     "code_version": e.code_version, "cache_key": e.cache_key, "config": e.config}
            if e.cached_from:
                entry["cached_from_run"] = store.execution(e.cached_from).run_id
            steps[e.id] = entry
            if n.run is not None:
                runs[n.run.id] = n.run
    run = tree.run
    spec = None
    if run is not None:
        spec = {"pipeline": run.pipeline, "sha256": run.spec_digest, "path": str(Path(run.root) / "spec.yaml")}
    ordered = sorted(steps.values(), key=lambda s: s["execution"])
    a = tree.artifact
    return {
        "artifact": {"id": a.id, "name": a.name, "uri": a.uri, "type": a.type, "sha256": a.digest, "bytes": a.size},
        "run": run.id if run else None,
        "spec": spec,
        "data": sorted(sources.values(), key=lambda s: s["name"]),
        "steps": ordered,
    }


def render_lineage(console: Any, tree: LineageNode, summary: dict[str, Any]) -> None:
    """Print a lineage summary and tree with rich."""
    from rich.markup import escape
    from rich.tree import Tree

    a = summary["artifact"]
    console.print(f"[bold]{escape(a['name'])}[/bold] ({a['type']}, {a['bytes']:,} bytes) sha256:{a['sha256']}")
    if summary["spec"]:
        s = summary["spec"]
        console.print(f"[bold]spec[/bold]   pipeline {escape(s['pipeline'])} · sha256:{s['sha256']} · {escape(s['path'])}")
    for d in summary["data"]:
        console.print(f"[bold]data[/bold]   {escape(d['name'])} sha256:{d['sha256']} ({d['bytes']:,} bytes)")
    chain = " → ".join(s["step"] + (" (cached)" if s["status"] == "cached" else "") for s in summary["steps"])
    console.print(f"[bold]steps[/bold]  {escape(chain)}")
    for s in summary["steps"]:
        origin = f", reused from run {s['cached_from_run']}" if s.get("cached_from_run") else ""
        console.print(f"         {escape(s['step'])}: run {s['run']}, code {escape(s['code_version'])}{origin}")

    shown: set[int] = set()

    def label(n: LineageNode) -> str:
        text = f"{escape(n.artifact.name)} [dim]sha256:{n.artifact.digest[:12]}[/dim]"
        if n.execution is not None:
            text += f" ← [cyan]{escape(n.execution.step)}[/cyan] [dim]({n.execution.status})[/dim]"
        return text

    def add(parent: Any, n: LineageNode) -> None:
        if n.execution is not None and n.execution.id in shown and n.parents:
            parent.add(label(n) + " [dim](inputs above)[/dim]")
            return
        branch = parent.add(label(n))
        if n.execution is None:
            return
        shown.add(n.execution.id)
        for p in n.parents:
            add(branch, p)

    root = Tree(label(tree))
    if tree.execution is not None:
        shown.add(tree.execution.id)
        for p in tree.parents:
            add(root, p)
    console.print(root)
