"""The documentation site: every public function, class, method and property the API reference
renders (the ``::: module`` directives of docs/api/*.md) has a docstring, every page is in the
nav, and ``mkdocs build --strict`` passes (when mkdocs is installed: the ``docs`` extra)."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DIRECTIVE = re.compile(r"^::: ([\w.]+)\s*$")
MEMBERS = re.compile(r"^\s+members:\s*\[(.*)\]\s*$")


def api_directives() -> list[tuple[str, list[str] | None]]:
    """(identifier, its ``members`` option or None) of every ``:::`` directive in docs/api/."""
    found: list[tuple[str, list[str] | None]] = []
    for page in sorted((DOCS / "api").glob("*.md")):
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            m = DIRECTIVE.match(line)
            if not m:
                continue
            members = None
            for opt in lines[i + 1 : i + 4]:
                mm = MEMBERS.match(opt)
                if mm:
                    members = [s.strip() for s in mm.group(1).split(",") if s.strip()]
            found.append((m.group(1), members))
    return found


def _public_members(module: object, members: list[str] | None) -> list[str]:
    if members is not None:
        return members
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    return list(names)


def _documented(obj: object) -> bool:
    doc = getattr(obj, "__doc__", None)
    return isinstance(doc, str) and doc.strip() != ""


def undocumented(identifier: str, members: list[str] | None) -> list[str]:
    """Public functions, classes and their public methods/properties without a docstring, as
    the API reference renders ``identifier``."""
    try:
        target = importlib.import_module(identifier)
    except ImportError:  # a function of a package, e.g. meta_rl.load
        module_name, _, attr = identifier.rpartition(".")
        target = getattr(importlib.import_module(module_name), attr)
        return [] if _documented(target) else [identifier]
    missing = [] if _documented(target) else [identifier]
    for name in _public_members(target, members):
        obj = getattr(target, name)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if obj.__module__ != target.__name__:
            continue  # re-exported: documented where it is defined
        if not _documented(obj):
            missing.append(f"{identifier}.{name}")
        if inspect.isclass(obj):
            for key, value in vars(obj).items():
                if key.startswith("_"):
                    continue
                if isinstance(value, property):
                    value = value.fget
                elif isinstance(value, (classmethod, staticmethod)):
                    value = value.__func__
                if inspect.isfunction(value) and not _documented(value):
                    missing.append(f"{identifier}.{name}.{key}")
    return missing


def test_api_reference_documents_the_sharing_modules():
    identifiers = {ident for ident, _ in api_directives()}
    assert {"meta_rl.load", "meta_rl.agent", "meta_rl.zoo", "meta_rl.hub", "meta_rl.card"} <= (
        identifiers
    )


@pytest.mark.parametrize("identifier,members", api_directives(), ids=lambda x: str(x))
def test_every_public_object_in_the_api_reference_has_a_docstring(identifier, members):
    assert undocumented(identifier, members) == []


def test_the_checker_finds_a_missing_docstring(tmp_path, monkeypatch):
    (tmp_path / "undoc_mod.py").write_text(
        '"""A module."""\n\ndef documented():\n    """Yes."""\n\n\ndef bare():\n    pass\n\n\n'
        'class Thing:\n    """A thing."""\n\n    @property\n    def size(self):\n        return 1\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert undocumented("undoc_mod", None) == ["undoc_mod.bare", "undoc_mod.Thing.size"]


def _nav_pages(items: object) -> list[str]:
    if isinstance(items, str):
        return [items]
    if isinstance(items, list):
        return [p for item in items for p in _nav_pages(item)]
    if isinstance(items, dict):
        return [p for v in items.values() for p in _nav_pages(v)]
    return []


def test_every_docs_page_is_in_the_nav_and_every_nav_page_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = set(_nav_pages(config["nav"]))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert nav == pages


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or shutil.which("mkdocs") is None,
    reason="mkdocs is not installed (the docs extra: pip install -e '.[docs]')",
)
def test_mkdocs_build_strict_passes_without_warnings(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    paths = [str(ROOT), *[p for p in sys.path if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    proc = subprocess.run(
        ["mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "WARNING" not in proc.stderr, proc.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "sharing" / "index.html").exists()


def test_ci_runs_the_readme_test_command_then_the_strict_docs_build():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    readme = (ROOT / "README.md").read_text()
    command = 'pip install -e ".[dev]" && pytest -q'
    assert command in readme
    assert command in ci
    docs = [line for line in ci if "mkdocs build --strict" in line]
    assert docs and ci.index(docs[0]) > ci.index(command)
    assert '".[docs]"' in docs[0]


def _zoo_snippets() -> list[tuple[str, str]]:
    pages = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    out = []
    for page in pages:
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), re.S):
            if 'meta_rl.load("zoo:' in block:
                out.append((str(page.relative_to(ROOT)), block))
    return out


# SB3 advises a Monitor wrapper around a bare env; the snippets stay short without one
@pytest.mark.filterwarnings("ignore:Evaluation environment is not wrapped:UserWarning")
@pytest.mark.parametrize("page,snippet", _zoo_snippets(), ids=lambda x: x.split("\n")[0][:40])
def test_zoo_snippets_of_the_docs_run(page, snippet, tmp_path, monkeypatch):
    """The snippets that load a zoo agent run as written (no training, no network)."""
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, page, "exec"), {"__name__": "__snippet__"})
