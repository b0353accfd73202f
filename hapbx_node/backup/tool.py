"""pgBackRest's commands, each bounded in time. Nothing secret goes on a command line: the
cipher pass and the repository credentials stay in the configuration file (PGBACKREST_CONFIG)."""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass

BINARY = os.environ.get("HAPBX_PGBACKREST", "pgbackrest")


@dataclass(frozen=True)
class Result:
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def error_line(self) -> str:
        """pgBackRest's first ERROR line (its message), else the last line it wrote."""
        lines = [ln.strip() for ln in (self.stderr + "\n" + self.stdout).splitlines() if ln.strip()]
        for ln in lines:
            if "ERROR:" in ln:
                return ln[ln.index("ERROR:"):]
        return lines[-1] if lines else f"exit status {self.rc}"


def run(stanza: str, *args: str, timeout: float) -> Result:
    argv = [BINARY, f"--stanza={stanza}", *args]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        def text(v) -> str:
            return v.decode(errors="replace") if isinstance(v, bytes) else (v or "")
        return Result(124, text(e.stdout), text(e.stderr) + f"\nERROR: {args[0]} did not finish within {timeout:.0f} s")
    except OSError as e:
        return Result(127, "", f"ERROR: cannot run {BINARY}: {e}")
    return Result(out.returncode, out.stdout, out.stderr)


def info(stanza: str, timeout: float = 120) -> tuple[Result, dict | None]:
    """``info --output=json``: the stanza's entry (None when the command failed)."""
    res = run(stanza, "--output=json", "info", timeout=timeout)
    if not res.ok:
        return res, None
    try:
        entries = json.loads(res.stdout)
    except ValueError:
        return Result(1, res.stdout, res.stderr + "\nERROR: info printed no JSON"), None
    entry = next((e for e in entries if e.get("name") == stanza), None)
    return res, entry


def backups(entry: dict | None) -> list[dict]:
    return list((entry or {}).get("backup") or [])


def stored_bytes(backup: dict) -> int:
    """What a backup added to the repository (compressed, after dedup against its prior backups)."""
    repo = (backup.get("info") or {}).get("repository") or {}
    return int(repo.get("delta", repo.get("size", 0)) or 0)
