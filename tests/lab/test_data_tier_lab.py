"""The data tier on the lab: PostgreSQL streaming with lag reported, Redis replicating."""
from __future__ import annotations

import time
import uuid

from components.render import redis as redis_render

PSQL = "runuser -u postgres -- psql -X -A -t -q -d postgres -c"
REDIS = redis_render.local_cli()   # root's default user, over TLS


def sql(lab, node: str, query: str) -> str:
    return lab.sh(node, f'cd / && {PSQL} "{query}"').strip()


def roles(lab):
    primary, standby = lab.cluster.primary, lab.cluster.standby
    return primary.name, standby.name, standby.address


def test_standby_streams_from_the_primary_with_lag_reported(lab):
    primary, standby, standby_addr = roles(lab)
    assert sql(lab, primary, "select pg_is_in_recovery()") == "f"
    assert sql(lab, standby, "select pg_is_in_recovery()") == "t"
    rows = sql(lab, primary, "select client_addr, state, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), "
                             "coalesce(extract(epoch from replay_lag), 0) from pg_stat_replication")
    streaming = [r.split("|") for r in rows.splitlines() if r.split("|")[1] == "streaming"]
    assert [r[0] for r in streaming] == [standby_addr], rows
    lag_bytes, lag_s = streaming[0][2], streaming[0][3]
    print(f"\nreplication lag {primary} -> {standby}: {lag_bytes} bytes, {lag_s} s")
    assert sql(lab, standby, "select status from pg_stat_wal_receiver") == "streaming"


def test_a_row_written_on_the_primary_is_read_on_the_standby(lab):
    primary, standby, _ = roles(lab)
    token = uuid.uuid4().hex
    sql(lab, primary, "create table if not exists hapbx_lab_check (token text primary key, at timestamptz default now())")
    sql(lab, primary, f"insert into hapbx_lab_check (token) values ('{token}')")
    started = time.monotonic()
    while time.monotonic() - started < 10:
        if sql(lab, standby, f"select count(*) from hapbx_lab_check where token = '{token}'") == "1":
            print(f"\nrow visible on {standby} after {time.monotonic() - started:.3f} s")
            return
        time.sleep(0.05)
    raise AssertionError(f"row not on {standby} after 10 s")


def test_the_schema_is_on_both_nodes(lab):
    primary, standby, _ = roles(lab)
    q = "select count(*) from schema_migrations"
    assert int(lab.sh(primary, f'cd / && runuser -u postgres -- psql -X -A -t -q -d pbx -c "{q}"')) >= 5
    assert lab.sh(standby, f'cd / && runuser -u postgres -- psql -X -A -t -q -d pbx -c "{q}"') == \
        lab.sh(primary, f'cd / && runuser -u postgres -- psql -X -A -t -q -d pbx -c "{q}"')


def test_redis_replica_replicates_the_master(lab):
    primary, standby, _ = roles(lab)
    info = lab.sh(standby, f"{REDIS} info replication")
    fields = dict(line.strip().split(":", 1) for line in info.splitlines() if ":" in line)
    assert fields["role"] == "slave" and fields["master_host"] == lab.cluster.primary.address
    assert fields["master_link_status"] == "up"
    key, value = f"hapbx:labcheck:{uuid.uuid4().hex}", uuid.uuid4().hex
    lab.sh(primary, f"{REDIS} set {key} {value} EX 60")
    started = time.monotonic()
    while time.monotonic() - started < 5:
        if lab.sh(standby, f"{REDIS} get {key}").strip() == value:
            return
        time.sleep(0.05)
    raise AssertionError("key not replicated within 5 s")
