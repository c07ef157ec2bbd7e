"""The layer rules of ARCHITECTURE.md, checked on the source: who may import whom (imports
inside functions count), no import cycles, no family-id branching in meta_rl/, and the size
limits that keep each file and function readable in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"meta_rl": ROOT / "meta_rl", "meta_rl_envs": ROOT / "envs"}
MAX_FILE_LINES = 700
MAX_FUNCTION_LINES = 150


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an import of ``name`` loads (the longest known prefix)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in MODULES:
            return candidate
    return None


def _imports(module: str) -> set[str]:
    """Project modules imported anywhere in ``module`` (top level or inside functions),
    ``from package import submodule`` resolved to the submodule."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # a submodule if it is one, else an attribute of the module ``base``
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                out.add(target)
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert _cycles() == []


def test_envs_are_a_leaf():
    bad = {
        m: sorted(t for t in GRAPH[m] if t.startswith("meta_rl."))
        for m in MODULES
        if m.startswith("meta_rl_envs")
    }
    assert {m: t for m, t in bad.items() if t} == {}


def test_core_is_a_leaf():
    bad = {
        m: sorted(t for t in GRAPH[m] if not t.startswith("meta_rl.core") and t != "meta_rl")
        for m in MODULES
        if m.startswith("meta_rl.core")
    }
    assert {m: t for m, t in bad.items() if t} == {}


@pytest.mark.parametrize("module", ["meta_rl.collectives", "meta_rl.runlock", "meta_rl._version"])
def test_leaf_modules_import_nothing_from_the_package(module):
    assert module in MODULES
    assert GRAPH[module] == set()


@pytest.mark.parametrize(
    "module", ["meta_rl.launch", "meta_rl.tune", "meta_rl.tune_space", "meta_rl.tune_report"]
)
def test_launch_and_tune_never_import_the_cli(module):
    assert "meta_rl.cli" not in GRAPH[module]


def test_files_and_functions_stay_small():
    long_files = {}
    long_functions = {}
    for module, path in MODULES.items():
        text = path.read_text()
        if text.count("\n") > MAX_FILE_LINES:
            long_files[module] = text.count("\n")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions[f"{module}.{node.name}"] = n
    assert long_files == {}
    assert long_functions == {}


def _family_id(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and (node.value.startswith("MetaRL/") or node.value.startswith("Meta-World/"))
    )


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("meta_rl.")))
def test_meta_rl_never_branches_on_a_family_id(module):
    """Family knowledge lives in envs/ (FamilySpec): meta_rl/ may name a family as a config
    value, but never compares against one or keys a table by one."""
    tree = ast.parse(MODULES[module].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            assert not any(_family_id(n) for n in [node.left, *node.comparators]), (
                f"{module}:{node.lineno} compares against a family id"
            )
        if isinstance(node, ast.Dict):
            assert not any(k is not None and _family_id(k) for k in node.keys), (
                f"{module}:{node.lineno} keys a table by a family id"
            )


SHARING = ("meta_rl.card", "meta_rl.zoo", "meta_rl.hub")


@pytest.mark.parametrize("module", SHARING)
def test_sharing_modules_sit_below_the_agent_and_above_the_run_folder(module):
    """zoo / hub / card resolve and write run folders (runs, checkpoint, report); the loader
    (agent) calls them, never the other way round, and they never reach the CLI."""
    assert module in MODULES
    above = {"meta_rl.agent", "meta_rl.evaluate", "meta_rl.cli", "meta_rl.cli_share"}
    assert GRAPH[module] & above == set()


def test_nothing_below_the_agent_imports_the_sharing_modules():
    below = [
        m
        for m in MODULES
        if m.startswith(("meta_rl.core", "meta_rl.rl", "meta_rl.fewshot", "meta_rl.policies"))
        or m in ("meta_rl.runs", "meta_rl.checkpoint", "meta_rl.loop", "meta_rl.config")
    ]
    assert {m: sorted(GRAPH[m] & set(SHARING)) for m in below if GRAPH[m] & set(SHARING)} == {}
