"""The HA core of a PBX node: who may write.

decide.py   the pure state machine: (state, observations) -> (state, actions, reason)
settings.py every parameter, from the env file the render layer writes (no defaults here)
store.py    the lease store behind one interface (etcd through etcdctl)
drivers.py  PostgreSQL, Redis, keepalived/VIP, jobs: observe and act, decide nothing
writes.py   stop_writes(mode): the one way local writes stop, from a table
daemon.py   the loop: observe -> decide -> act -> publish role and why
bin/        keepalived's notify/track entry points and the operator's jobs (bash)
"""
