"""Bad config is refused before anything is touched, naming the key, value and what is allowed."""
import copy
import subprocess

import pytest
import yaml

from components.config import ConfigError, build
from tests.mockrun import ROOT, stack_config


def mutate(raw, path, value):
    raw = copy.deepcopy(raw)
    target = raw
    keys = path.split(".")
    for k in keys[:-1]:
        target = target[int(k)] if k.isdigit() else target[k]
    last = keys[-1]
    if value is DELETE:
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return raw


DELETE = object()

# (description, key path to change, new value, key the error must name, text the message must hold)
INVALID = [
    ("one node only", "nodes", lambda r: r["nodes"][:1], "nodes", "exactly 2"),
    ("three nodes", "nodes", lambda r: r["nodes"] + [dict(r["nodes"][0], name="pbx3", address="10.77.0.14")],
     "nodes", "exactly 2"),
    ("duplicate node name", "nodes.1.name", "pbx1", "nodes", "used twice"),
    ("duplicate address", "nodes.1.address", "10.77.0.11", "nodes", "used twice"),
    ("witness shares node address", "witness.address", "10.77.0.12", "nodes", "used twice"),
    ("VIP outside subnet", "vip.address", "10.99.0.10", "vip.address", "not in the nodes' subnet"),
    ("VIP equals a node", "vip.address", "10.77.0.11", "vip.address", "node's address"),
    ("VIP is broadcast", "vip.address", "10.77.0.255", "vip.address", "broadcast"),
    ("node in another subnet", "nodes.1.address", "10.78.0.12", "nodes[1].address", "not in"),
    ("not an address", "nodes.0.address", "10.77.0.300", "nodes[0].address", "not an IPv4 address"),
    ("port out of range", "kamailio.sipPort", 70000, "kamailio.sipPort", "out of range"),
    ("port clash", "redis.port", 5432, "redis.port", "already used by postgres.port"),
    ("port inside RTP range", "kamailio.sipPort", 20500, "kamailio.sipPort", "inside the RTP range"),
    ("RTP range reversed", "firewall.rtpPortMin", 30000, "firewall.rtpPortMin", "not below"),
    ("unsupported postgres", "postgres.version", "12", "postgres.version", "not allowed"),
    ("unsupported kamailio", "kamailio.version", "5.4", "kamailio.version", "not allowed"),
    ("unknown media engine", "media.engine", "asterisk", "media.engine", "not allowed"),
    ("freeswitch in lab", "media.engine", "freeswitch", "media.engine", "not packaged by Debian"),
    ("typo in a key", "kamailio.shmMB", 256, "kamailio.shmMB", "unknown key"),
    ("unknown top-level key", "kamailo", {}, "kamailo", "unknown key"),
    ("memory does not fit", "nodes.0.memoryMb", 1024, "nodes[0].memoryMb", "less than"),
    ("tmpfs larger than memory", "recordings.tmpfsMb", 8192, "nodes[0].memoryMb", "less than"),
    ("wrong type", "nodes.0.cpus", "two", "nodes[0].cpus", "not a integer"),
    ("fractional advert with VRRPv2", "vip.vrrpVersion", 2, "vip.advertInterval", "fractional"),
    ("primary not a node", "postgres.initialPrimary", "pbx9", "postgres.initialPrimary", "not a node"),
    ("no witness and no policy", "witness", DELETE, "noWitnessPolicy", "required"),
    ("lab settings missing", "lab", DELETE, "lab", "required"),
    ("lease renewal too slow", "etcd", {"renewIntervalSeconds": 1.0}, "etcd.renewIntervalSeconds", "renewals"),
    ("isolation faster than 3 pings", "ha", {"reachIntervalMs": 200, "reachLostAfterMs": 500}, "ha.reachLostAfterMs",
     "3 pings"),
    ("bad interface name", "network.interface", "eth0 with space", "network.interface", "interface name"),
    ("missing required key", "vip", DELETE, "vip", "required"),
    ("bad CIDR", "firewall.sshAllowFrom", ["10.0.0.0/99"], "firewall.sshAllowFrom[0]", "CIDR"),
    ("bad name", "nodes.0.name", "PBX_1", "nodes[0].name", "valid name"),
]


@pytest.mark.parametrize("desc,path,value,key,text", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_config_is_rejected_naming_the_key(desc, path, value, key, text):
    base = stack_config("lab")
    raw = mutate(base, path, value(base) if callable(value) else value)
    with pytest.raises(ConfigError) as err:
        build(raw)
    matching = [e for e in err.value.errors if e.startswith(f"{key}:")]
    assert matching, f"no error names {key!r}: {err.value.errors}"
    assert any(text in e for e in matching), matching


def test_every_problem_is_reported_at_once():
    raw = mutate(stack_config("lab"), "kamailio.sipPort", 70000)
    raw = mutate(raw, "redis.port", 0)
    raw = mutate(raw, "media.engine", "asterisk")
    with pytest.raises(ConfigError) as err:
        build(raw)
    assert {e.split(":")[0] for e in err.value.errors} >= {"kamailio.sipPort", "redis.port", "media.engine"}


def test_shipped_stacks_are_valid():
    lab, lab_warnings = build(stack_config("lab"))
    assert lab.environment == "lab" and not lab_warnings
    prod, _ = build({**stack_config("prod"), "vendorRepoToken": "x"})
    assert [n.address for n in prod.nodes] == ["192.168.1.101", "192.168.1.102"]
    assert prod.vip.address == "192.168.1.100" and prod.postgres.version == "17" and prod.kamailio.version == "6.0"
    assert (prod.os.release, [r.name for r in prod.packages.repositories]) == ("trixie", ["freeswitch"])
    assert (lab.os.release, lab.postgres.version, lab.kamailio.version) == ("bookworm", "15", "5.6")
    lab13, lab13_warnings = build(stack_config("lab-trixie"))
    assert not lab13_warnings and (lab13.postgres.version, lab13.kamailio.version) == ("17", "6.0")
    assert lab13.lab.name != lab.lab.name and lab13.lab.bridge != lab.lab.bridge and lab13.lab.subnet != lab.lab.subnet


@pytest.mark.parametrize("release, key, version, own", [
    ("bookworm", "postgres.version", "17", "15"), ("trixie", "postgres.version", "16", "17"),
    ("trixie", "kamailio.version", "5.6", "6.0"), ("bookworm", "kamailio.version", "6.0", "5.6")])
def test_a_version_debian_does_not_package_needs_a_vendor_repository(release, key, version, own):
    raw = mutate(mutate(stack_config("lab"), "os.release", release), key, version)
    with pytest.raises(ConfigError) as err:
        build(raw)
    assert any(e.startswith(f"{key}: {version!r} is not what Debian {release} packages ({own!r})")
               for e in err.value.errors), err.value.errors
    raw["packages"] = {"repositories": [{"name": "vendor", "uri": "http://vendor.invalid/deb", "suite": release,
                                         "keyUrl": "http://vendor.invalid/key.asc"}]}
    cfg, _ = build(raw)
    assert getattr(cfg, key.split(".")[0]).version == version


@pytest.mark.parametrize("release, postgres, kamailio", [("bookworm", "15", "5.6"), ("trixie", "17", "6.0")])
def test_unset_versions_are_the_releases_own(release, postgres, kamailio):
    raw = mutate(stack_config("lab"), "os.release", release)
    raw.pop("postgres", None)
    cfg, _ = build(raw)
    assert (cfg.postgres.version, cfg.kamailio.version) == (postgres, kamailio)
    assert f"postgresql-{postgres}" in cfg.node_packages()


def test_an_unknown_release_is_refused():
    with pytest.raises(ConfigError) as err:
        build(mutate(stack_config("lab"), "os.release", "buster"))
    assert any(e.startswith("os.release: 'buster'") for e in err.value.errors), err.value.errors


def test_prod_without_token_names_the_secret():
    with pytest.raises(ConfigError) as err:
        build(stack_config("prod"))
    assert any(e.startswith("vendorRepoToken:") and "--secret" in e for e in err.value.errors)


def test_no_witness_policy_warns():
    raw = mutate(stack_config("lab"), "witness", DELETE)
    raw["noWitnessPolicy"] = "promote-after-timeout"
    _, warnings = build(raw)
    assert any("two primaries" in w for w in warnings)


def test_check_cli_exits_2_listing_every_problem(tmp_path):
    with open(f"{ROOT}/Pulumi.lab.yaml") as fh:
        doc = yaml.safe_load(fh)
    doc["config"]["high-cc-pbx:kamailio"]["shmMB"] = 1
    doc["config"]["high-cc-pbx:vip"]["address"] = "10.77.0.11"
    doc["config"]["high-cc-pbx:nodes"][1]["memoryMb"] = 100
    doc["config"]["other:key"] = 1
    bad = tmp_path / "Pulumi.bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    out = subprocess.run([f"{ROOT}/hapbx", "check", "--config", str(bad)], capture_output=True, text=True)
    assert out.returncode == 2, out
    for key in ("kamailio.shmMB", "vip.address", "nodes[1].memoryMb", "other:key"):
        assert key in out.stderr, (key, out.stderr)
    ok = subprocess.run([f"{ROOT}/hapbx", "check", "--config", f"{ROOT}/Pulumi.lab.yaml"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_ha_timings_from_config_reach_keepalived():
    from components.render import RenderContext, keepalived, masked_secrets
    raw = stack_config("lab")
    raw["ha"] = {"checkFall": 5, "checkRise": 4}
    cluster, _ = build(raw)
    conf = next(f for f in keepalived.files(RenderContext(cluster, cluster.nodes[0], masked_secrets()))
                if f.path.endswith("keepalived.conf")).content
    assert "fall 5" in conf and "rise 4" in conf
    with pytest.raises(ConfigError) as err:
        build({**stack_config("lab"), "ha": {"rejoin": "sometimes"}})
    assert any(e.startswith("ha.rejoin:") for e in err.value.errors)
