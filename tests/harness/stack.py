"""A throwaway Pulumi program and where its state goes, for the harness tests that apply or preview one."""
from __future__ import annotations

from pathlib import Path


def write_program(directory: Path, project: str, source: str) -> Path:
    """`directory`, made here, holding a program of `project`: its Pulumi.yaml (runtime python) and
    `source` as its __main__.py."""
    directory.mkdir()
    (directory / "Pulumi.yaml").write_text(f"name: {project}\nruntime: python\n")
    (directory / "__main__.py").write_text(source)
    return directory


class ThrowawayStack:
    """`source` as the program tmp_path/program of `project`; its state file tmp_path/state/stack.json
    (a Path, not made here: the harness takes str(state)); logs: what the harness logged."""

    def __init__(self, tmp_path: Path, project: str, source: str):
        self.program = write_program(tmp_path / "program", project, source)
        self.state = tmp_path / "state" / "stack.json"
        self.logs: list[str] = []
