"""The parts of the repository and what each may import (README, "Architecture"). A new import
across a line drawn here fails this test instead of slowly tangling the house again."""
from __future__ import annotations

import ast
import os

from tests.mockrun import ROOT

#: part -> the repository packages (and Pulumi) its modules may import besides themselves
MAY_IMPORT = {
    "hapbx_node": set(),                                   # runs on the nodes: standard library (+ psycopg2, redis)
    "components/render": {"components", "hapbx_node"},     # pure rendering: never Pulumi
    "components": {"components", "hapbx_node", "pulumi"},
    "harness": {"pulumi"},                                 # the engine knows no program
    "ops": {"components", "hapbx_node"},                  # a running cluster over SSH: no Pulumi, no lab
    "lab": {"components", "hapbx_node", "harness", "ops"},
    "bench": {"components", "hapbx_node", "harness", "lab", "ops"},  # ops: what an operator runs during a bench
    "cli": {"components", "hapbx_node", "harness", "lab", "bench", "ops"},
}
REPO_PACKAGES = {"components", "hapbx_node", "harness", "lab", "bench", "cli", "ops", "tests"}


def _part(rel: str) -> str | None:
    for part in sorted(MAY_IMPORT, key=len, reverse=True):
        if rel.startswith(part + "/"):
            return part
    return None


def _imports(path: str) -> set[str]:
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), path)
    out = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top.startswith("pulumi"):
                out.add("pulumi")
            elif top in REPO_PACKAGES:
                out.add(top)
    return out


def _modules():
    for part in MAY_IMPORT:
        for base, dirs, files in os.walk(os.path.join(ROOT, part)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(base, f)
                    rel = os.path.relpath(path, ROOT)
                    if _part(rel) == part:
                        yield part, rel, path


def test_each_part_imports_only_what_it_may():
    wrong = []
    for part, rel, path in _modules():
        own = part.split("/")[0]
        extra = _imports(path) - MAY_IMPORT[part] - {own}
        if part == "components/render":
            extra |= _imports(path) & {"pulumi"}
        if extra:
            wrong.append(f"{rel} imports {sorted(extra)} (a {part} module may import {sorted(MAY_IMPORT[part])})")
    assert not wrong, "\n".join(wrong)


def test_the_rules_cover_every_package_of_the_repository():
    tops = {d for d in os.listdir(ROOT) if os.path.isfile(os.path.join(ROOT, d, "__init__.py"))}
    assert tops - {"tests"} <= {p.split("/")[0] for p in MAY_IMPORT}, tops
