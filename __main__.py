"""high-cc-pbx: two Debian 12 machines (and a witness) into an HA PBX.

Config is read and validated once, here; components get typed Args.
"""
import pulumi
import pulumi_random as random

from components.backup import Backup, BackupArgs
from components.config import ConfigError, from_pulumi_config
from components.cdr import CdrPipeline, CdrPipelineArgs
from components.certificates import ClusterCa, ClusterCaArgs, SipCertificate, SipCertificateArgs
from components.node import Node, NodeArgs
from components.postgres_pair import PostgresPair, PostgresPairArgs
from components.redis_pair import RedisPair, RedisPairArgs
from components.media import Media, MediaArgs
from components.monitoring import Monitoring, MonitoringArgs
from components.recording_sync import RecordingSync, RecordingSyncArgs
from components.sip_layer import SipLayer, SipLayerArgs
from components.render import CONFIG_SECRETS, GENERATED_SECRETS, OVERRIDABLE_SECRETS, media_node_secrets
from components.ssh import reach
from components.virtual_ip import VirtualIp, VirtualIpArgs
from components.witness import Witness, WitnessArgs

config = pulumi.Config()
# `pulumi preview` (a PR reviewer, a CI runner) connects nowhere: it needs nothing on local disk.
preview = pulumi.runtime.is_dry_run()
try:
    cluster, warnings = from_pulumi_config(config)
    hosts, key_text, ssh_warnings = reach(cluster, preview)
except ConfigError as err:
    # Fail before any resource exists, with every problem listed.
    raise pulumi.RunError(str(err)) from None
for warning in [*warnings, *ssh_warnings]:
    pulumi.log.warn(warning)

# The key: secret config (works anywhere), else the file on the deploy host, else ssh-agent.
private_key = None
if cluster.ssh_private_key:  # `pulumi config set --secret` from a file drops the final newline
    private_key = config.require_secret("sshPrivateKey").apply(lambda k: k if k.endswith("\n") else k + "\n")
if key_text is not None:
    private_key = pulumi.Output.secret(key_text)

# Every generated credential is a pulumi-random password: stable across applies, secret in state.
secrets: dict[str, pulumi.Output[str]] = {
    name: pulumi.Output.secret(random.RandomPassword(
        f"secret-{name.replace('_', '-')}", length=32, special=False).result)
    for name in (*GENERATED_SECRETS, *media_node_secrets(cluster))   # a media node's: named after it
    if not (name in OVERRIDABLE_SECRETS and getattr(cluster, name))   # the stack's config gives it
}
# The stack's own secret config the files hold (vendor_repo_token: config key vendorRepoToken, ...).
for name in (*CONFIG_SECRETS, *OVERRIDABLE_SECRETS):
    if getattr(cluster, name):
        key = "".join(w.capitalize() if i else w for i, w in enumerate(name.split("_")))
        secrets[name] = config.require_secret(key)

# The links between the nodes: the cluster's internal CA and each node's service certificates.
cluster_ca = ClusterCa("cluster-ca", ClusterCaArgs(cluster=cluster))
secrets.update(cluster_ca.secrets(cluster))

# SIP over TLS: the stack's own certificate, else one from the cluster CA (pulumi-tls, in state).
sip_certificate = None
if cluster.kamailio.tls:
    sip_certificate = SipCertificate("sip-tls", SipCertificateArgs(
        cluster=cluster, provided_certificate=cluster.kamailio.tls_certificate,
        provided_key=config.require_secret("kamailioTlsKey") if cluster.kamailio.tls_certificate else None))
    secrets["kamailio_tls_certificate"] = pulumi.Output.secret(sip_certificate.certificate_pem)
    secrets["kamailio_tls_key"] = sip_certificate.private_key_pem

nodes = {
    h.name: Node(h.name, NodeArgs(cluster=cluster, host=h, endpoint=hosts[h.name], private_key=private_key,
                                  secrets=secrets))
    for h in [*cluster.nodes, *([cluster.witness] if cluster.witness else []), *cluster.media_nodes]
}

# The data tier on the two PBX nodes, each step after its node's baseline (node.ready).
pbx_nodes = {n.name: nodes[n.name] for n in cluster.nodes}
postgres = PostgresPair("postgres", PostgresPairArgs(cluster=cluster, nodes=pbx_nodes, secrets=secrets))
redis = RedisPair("redis", RedisPairArgs(cluster=cluster, nodes=pbx_nodes, secrets=secrets))

# HA: the etcd quorum for the leader lease (nodes + witness), then keepalived and the failover
# scripts, which start only once PostgreSQL and Redis are configured.
witness = Witness("etcd", WitnessArgs(cluster=cluster, hosts=nodes, secrets=secrets)) if cluster.witness else None
vip = VirtualIp("vip", VirtualIpArgs(cluster=cluster, nodes=pbx_nodes, secrets=secrets,
                                     after=[*postgres.ready, *redis.ready, *(witness.ready if witness else [])]))

# The CDR pipeline and the admin API on both nodes: receivers and admin APIs everywhere, the
# CDR worker only on the writer (placed here once HA has settled, then moved by the failover scripts).
cdr = CdrPipeline("cdr", CdrPipelineArgs(cluster=cluster, nodes=pbx_nodes, secrets=secrets,
                                         after=[*postgres.schema_ready, *postgres.ready, *redis.ready, *vip.ready]))

# SIP and media: Kamailio reads the auth view and dispatcher table from each node's local
# PostgreSQL, so it starts once the schema exists on the primary and the standby follows it.
# The media engine also runs on each media node (mediaNodes), one more dispatcher destination each.
engine_hosts = {**pbx_nodes, **{m.name: nodes[m.name] for m in cluster.media_nodes}}
media = Media("media", MediaArgs(cluster=cluster, nodes=engine_hosts, secrets=secrets))
sip = SipLayer("sip", SipLayerArgs(cluster=cluster, nodes=pbx_nodes, secrets=secrets,
                                   database_ready=[*postgres.schema_ready, *postgres.ready]))
recordings = RecordingSync("recsync", RecordingSyncArgs(cluster=cluster, nodes=engine_hosts, after=media.ready))

# Monitoring last: every daemon it watches is configured, the exporters' role and user exist.
monitoring = Monitoring("monitoring", MonitoringArgs(cluster=cluster, nodes=engine_hosts, secrets=secrets,
                                                     after=[*postgres.schema_ready, *redis.ready, *cdr.ready,
                                                            *sip.ready, *media.ready]))

# Backups once PostgreSQL archives on both nodes, the recordings directory exists and HA has
# settled: the stanza step needs the local PostgreSQL up, which a leader-daemon restart may fence.
backup = Backup("backup", BackupArgs(cluster=cluster, nodes=pbx_nodes, secrets=secrets,
                                     after=[*postgres.schema_ready, *postgres.ready, *media.ready, *vip.ready]))

pulumi.export("environment", cluster.environment)
pulumi.export("vip", cluster.vip.address)
pulumi.export("nodes", {name: node.address for name, node in nodes.items()
                        if name not in {m.name for m in cluster.media_nodes}})
pulumi.export("initialPrimary", cluster.primary.name)
pulumi.export("witness", cluster.witness.address if cluster.witness else None)
if cluster.media_nodes:
    pulumi.export("mediaNodes", {m.name: m.address for m in cluster.media_nodes})
pulumi.export("postgres", {"primary": postgres.primary_name, "standby": postgres.standby_name,
                           "version": cluster.postgres.version, "port": cluster.postgres.port, "database": "pbx"})
pulumi.export("redis", {"master": cluster.primary.name, "replica": cluster.standby.name, "port": cluster.redis.port})
# the CA phones must trust for SIP over TLS (public: a certificate, not a key)
pulumi.export("sipTlsCa", sip_certificate.ca_pem if sip_certificate else None)
pulumi.export("clusterCa", cluster_ca.ca_pem)   # public: what the admin API's HTTPS chains to (curl --cacert)
pulumi.export("monitoring", monitoring.urls)
pulumi.export("backup", {"stanza": cluster.backup.stanza, "repository": cluster.backup.repository.type,
                         "restore": "./hapbx restore --stack <stack> --to <time|latest> [--node <node>]"}
              if cluster.backup.enabled else None)
pulumi.export("cdr", {"receiverPort": cluster.cdr.receiver_port, "workerUnit": "hapbx-cdr-worker.service",
                     "adminUrl": f"https://{cluster.vip.address}:{cluster.admin.port}"})
