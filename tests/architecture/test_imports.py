"""The import arrows of docs/architecture.md, read from the source (every import statement,
module level or inside a function, resolved to our modules): no cycle anywhere, refimpl and
verify import nothing of mha2sha, and each room of mha2sha imports only the rooms below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("mha2sha", "verify", "refimpl", "fuzz")


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> set[str]:
    """Our modules that ``module`` imports (a ``from pkg import sub`` counts as ``pkg.sub``)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names = [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source for a in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                found.add(target)
    return found


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_the_walk_sees_the_imports():
    # The walk itself: a known arrow and a known function-level import are found.
    assert "mha2sha.analysis.opaxes" in GRAPH["mha2sha.analysis.rules"]
    assert "mha2sha.passes.o_proj" in GRAPH["mha2sha.api"]  # imported inside a function
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    assert _cycles(GRAPH) == []


def _importers_of(prefix: str, importers: tuple[str, ...]) -> dict[str, list[str]]:
    return {m: sorted(t for t in GRAPH[m] if t == prefix or t.startswith(prefix + "."))
            for m in GRAPH if m.split(".")[0] in importers and any(t.split(".")[0] == prefix for t in GRAPH[m])}


def test_refimpl_imports_nothing_of_ours():
    assert {m: sorted(t for t in GRAPH[m] if not t.startswith("refimpl")) for m in GRAPH
            if m.startswith("refimpl") and any(not t.startswith("refimpl") for t in GRAPH[m])} == {}


def test_verify_imports_nothing_of_mha2sha():
    assert _importers_of("mha2sha", ("verify",)) == {}  # issue 15: the verifier stands alone


def test_only_the_command_line_imports_fuzz():
    # fuzz builds test models; the converter's only use of it is the `example` and `demo`
    # commands' bundled examples, which the command line hands in (mha2sha.demo takes them).
    assert sorted(m for m, ts in _importers_of("fuzz", ("mha2sha",)).items() if ts) == ["mha2sha.cli"]


def test_demo_imports_nothing_of_fuzz():
    assert not any(t.split(".")[0] == "fuzz" for t in GRAPH["mha2sha.demo"])


# Each room of mha2sha and what it may import of ours (besides itself). A lower room never
# imports a higher one: graph/ depends on nothing above it.
ALLOWED = {
    "mha2sha.errors": set(),
    "mha2sha.ledger": set(),  # the conversion ledger: plain records, read by every consumer
    "mha2sha.outputs": {"mha2sha.errors"},
    "mha2sha.graph": {"mha2sha.errors", "mha2sha.outputs"},
    "mha2sha.analysis": {"mha2sha.graph", "mha2sha.errors", "mha2sha.outputs"},
    "mha2sha.split": {"mha2sha.analysis", "mha2sha.graph", "mha2sha.errors", "mha2sha.outputs", "mha2sha.ledger"},
    "mha2sha.passes": {"mha2sha.split", "mha2sha.analysis", "mha2sha.graph", "mha2sha.errors", "mha2sha.outputs", "mha2sha.ledger"},
    "mha2sha.encodings": {"mha2sha.errors", "mha2sha.ledger", "refimpl"},
    "fuzz": {"refimpl"},
}


def _room(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "mha2sha" and len(parts) > 1 else parts[0]


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_rooms_import_only_the_rooms_below(room):
    allowed = ALLOWED[room] | {room}
    wrong = {m: sorted(t for t in GRAPH[m] if _room(t) not in allowed) for m in GRAPH if _room(m) == room}
    assert {m: ts for m, ts in wrong.items() if ts} == {}
