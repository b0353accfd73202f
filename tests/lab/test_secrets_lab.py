"""No secret on any command line on the nodes (issue 21): every process's argv is sampled on each
node (every 20 ms) while an apply runs every command again; no sample holds a generated credential
(tests/lab/argv_scan.py). What ps shows, every local user sees. The same scan runs during a
failover drill (test_drill_lab)."""
from __future__ import annotations

from tests.lab import argv_scan


def test_no_generated_secret_on_any_command_line_during_an_apply(lab):
    secrets = argv_scan.generated_secrets(lab)
    with argv_scan.sampling(lab) as seen:
        result = lab.apply(force=True)
        assert result.replaced, "the forced apply ran nothing"
    argv_scan.assert_no_secret(seen, secrets)
