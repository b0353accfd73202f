"""Every host's rendered files written under a directory, secrets masked, plus a manifest (`hapbx render`)."""
from __future__ import annotations

import json
import os

from components.config import ClusterConfig
from components.render import masked_secrets, render_cluster


def write_render(cluster: ClusterConfig, out: str) -> int:
    manifest = []
    for host, files in render_cluster(cluster, masked_secrets()).items():
        for f in files:
            dest = os.path.join(out, host, f.path.lstrip("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "w", encoding="utf-8") as fh:
                fh.write(f.content)
            manifest.append({"host": host, "path": f.path, "owner": f.owner, "group": f.group, "mode": f.mode,
                             "validate": f.validate, "service": f.service, "action": f.action,
                             "secrets": list(f.secrets), "sha256": f.sha256})
    with open(os.path.join(out, "manifest.json"), "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2)
        fh.write("\n")
    return len(manifest)
