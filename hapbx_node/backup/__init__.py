"""pgBackRest's scheduled backups and the stanza step on a node (``python3 -m hapbx_node.backup``).

Modules: decide (which node backs up: pure), local (this node's PostgreSQL state), tool
(pgBackRest's commands), status (the status file), run (one scheduled backup), stanza (the
deploy's stanza step). Standard library and python3-psycopg2 only (it ships to the nodes).
"""
