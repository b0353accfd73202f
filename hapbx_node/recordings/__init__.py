"""Recordings retention and their copy to the backup repository (issue 23), run on each PBX node
by hapbx-recordings-retention.timer as ``python3 -m hapbx_node.recordings retention [--dry-run]``.

  plan.py     the one decision: files + their calls' facts + now -> keep or delete, and why (pure)
  files.py    the recordings on disk (and in a posix repository): path, call UUID, size, mtime
  facts.py    each file's call from cdr.calls and the retention that applies (psycopg2, read only)
  copy.py     the copy to the repository (rsync for posix, rclone for s3 and sftp) and its expiry
  status.py   /var/lib/hapbx/backup/recordings.json (the backup contract), written atomically
  run.py      one run: plan, delete (or only say so), copy, expire the copy, status
  settings.py the unit's environment and credential files (never a password in argv or env)
Standard library and psycopg2 only (Debian's python3-psycopg2 on the nodes).
"""
