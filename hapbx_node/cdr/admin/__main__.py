"""python3 -m hapbx_node.cdr.admin: the admin API (as python3 -m hapbx_node.cdr admin)."""
from . import main

raise SystemExit(main())
