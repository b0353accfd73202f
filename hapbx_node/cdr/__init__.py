"""high-cc-pbx CDR pipeline and admin service.

Runs on the PBX nodes with Debian's own packages only (python3-aiohttp, python3-redis,
python3-psycopg2): no pip on production nodes. Its processes, one package:

  receiver  HTTP endpoint FreeSWITCH's mod_json_cdr posts to; validates, LPUSHes to Redis,
            answers 200 only after Redis acknowledged (every node)
  worker    Redis queue -> PostgreSQL in batches, at-least-once, idempotent on the call UUID
            (the VIP owner only: started and stopped by the failover scripts)
  admin     JSON admin API: extensions, SIP credentials, policies, routes, CDR search, health
  replay    one pass over FreeSWITCH's json_cdr error directory: posts the CDRs it could not
            deliver to the receiver (hapbx-cdr-replay.timer, nodes running FreeSWITCH)
  deadletters  the operator's command for the worker's dead-letter list: list, replay onto the
            queue (refuses what would only die again), drop (hapbx-cdr-deadletters on a node)

``python3 -m hapbx_node.cdr receiver|worker|admin|replay|deadletters`` (``python3 -m
hapbx_node.cdr.replay`` too); settings from the environment (settings.py).
"""

__version__ = "1.0"
