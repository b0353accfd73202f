"""Lab machinery pieces that need no root and touch nothing on the host."""
import os
import stat
from pathlib import Path

import pytest

from lab import LabNode, LabSpec, image, network, ssh_argv
from lab.host import LabError, Progress, mounts_under
from lab.machine import HOST0_NETWORK, Machine, _place


def make_spec(**over):
    fields = dict(name="hapbx-utest", bridge="hapbx-ubr0", subnet="10.80.0.0/24",
                  host_address="10.80.0.1",
                  nodes=(LabNode("pbx1", "10.80.0.11", ("netcat-openbsd",)),
                         LabNode("pbx2", "10.80.0.12", ["netcat-openbsd"]),
                         LabNode("witness", "10.80.0.13")),
                  state_dir="/nonexistent/hapbx-utest")
    fields.update(over)
    return LabSpec(**fields)


def test_spec_defaults_and_derived_names():
    spec = LabSpec(name="hapbx-lab", bridge="hapbx-br0", subnet="10.77.0.0/24",
                   host_address="10.77.0.1", nodes=[LabNode("pbx1", "10.77.0.11")])
    assert spec.state_dir == "/var/lib/hapbx/hapbx-lab"
    assert spec.cache_dir == "/var/cache/hapbx"
    assert spec.prefixlen == 24
    assert spec.machine_name("pbx1") == "hapbx-lab-pbx1"
    assert spec.nft_table == "hapbx_lab"
    assert isinstance(spec.nodes, tuple) and hash(spec)


@pytest.mark.parametrize("over, words", [
    (dict(bridge="a-very-long-bridge0"), "bridge"),
    (dict(subnet="10.80.0.0/33"), "subnet"),
    (dict(subnet="8.8.8.0/24", host_address="8.8.8.1"), "private"),
    (dict(host_address="10.81.0.1"), "host_address"),
    (dict(nodes=(LabNode("pbx1", "10.80.0.11"), LabNode("pbx1", "10.80.0.12"))), "unique"),
    (dict(nodes=(LabNode("pbx1", "10.80.0.1"),)), "already used"),
    (dict(name="Bad_Name"), "name"),
    (dict(nodes=()), "empty"),
])
def test_spec_rejects_bad_values(over, words):
    with pytest.raises(ValueError, match=words):
        make_spec(**over)


def test_layer_key_ignores_order_and_duplicates_but_not_content():
    assert image.layer_key("bookworm", ["b", "a"]) == image.layer_key("bookworm", ["a", "b", "a"])
    assert image.layer_key("bookworm", ["a"]) != image.layer_key("bookworm", ["a", "b"])
    # The same list over another release's base is another layer.
    assert image.layer_key("bookworm", ["a"]) != image.layer_key("trixie", ["a"])
    # Nodes with no packages run on the base alone.
    assert image.lower_dirs(Path("/c"), "trixie", ()) == [image.base_root(Path("/c"), "trixie")]


def test_ssh_argv_pins_the_host_key():
    spec = make_spec()
    argv = ssh_argv(spec, "pbx2", ["systemctl", "is-active", "ssh service"])
    assert argv[0] == "ssh"
    assert "StrictHostKeyChecking=yes" in argv
    assert f"UserKnownHostsFile={spec.known_hosts_path}" in argv
    assert "GlobalKnownHostsFile=/dev/null" in argv
    assert argv[argv.index("-i") + 1] == str(spec.private_key_path)
    assert argv[-2:] == ["root@10.80.0.12", "systemctl is-active 'ssh service'"]
    assert ssh_argv(spec, "pbx1")[-1] == "root@10.80.0.11"
    with pytest.raises(KeyError, match="no node 'nope'"):
        ssh_argv(spec, "nope")


def test_forward_drop_ruleset_spares_traffic_inside_the_bridge():
    text = network._ruleset(make_spec())
    assert 'iifname "hapbx-ubr0" oifname != "hapbx-ubr0" counter drop' in text
    assert 'oifname "hapbx-ubr0" iifname != "hapbx-ubr0" counter drop' in text
    assert "hook forward" in text and "table inet hapbx_utest {" in text


def test_host0_network_file():
    text = HOST0_NETWORK.format(address="10.80.0.11", prefixlen=24, gateway="10.80.0.1")
    assert "Address=10.80.0.11/24" in text and "Gateway=10.80.0.1" in text
    assert "LinkLocalAddressing=no" in text and "Name=host0" in text


def test_place_copies_directory_modes_from_the_image(tmp_path):
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    (lower / "root").mkdir(parents=True)
    (lower / "root").chmod(0o700)
    (lower / "etc").mkdir()
    (lower / "etc").chmod(0o755)
    upper.mkdir()
    _place(upper, [lower], "root/.ssh/authorized_keys", "key\n", 0o600)
    _place(upper, [lower], "etc/systemd/network/10-host0.network", "x", 0o644)
    mode = lambda p: stat.S_IMODE(os.stat(upper / p).st_mode)  # noqa: E731
    assert mode("root") == 0o700 and mode("root/.ssh") == 0o700
    assert mode("root/.ssh/authorized_keys") == 0o600
    assert mode("etc") == 0o755 and mode("etc/systemd/network/10-host0.network") == 0o644
    _place(upper, [lower], "root/.ssh/authorized_keys", "new\n", 0o600)  # rewrite works
    assert (upper / "root/.ssh/authorized_keys").read_text() == "new\n"


def test_progress_names_the_failed_step():
    lines = []
    p = Progress("hapbx-utest", lines.append)
    with p.step("boot pbx1"):
        pass
    assert lines[0].startswith("[lab hapbx-utest] boot pbx1 ... ") and lines[0].endswith("s")
    with pytest.raises(LabError) as err:
        with p.step("boot pbx2", hint="read the console log"):
            raise OSError("sshd did not answer")
    assert err.value.step == "boot pbx2"
    assert "sshd did not answer" in str(err.value) and "read the console log" in str(err.value)


def test_mounts_under_sees_nothing_in_a_fresh_dir(tmp_path):
    assert mounts_under(tmp_path) == []


def test_the_host_veth_name_is_nspawns_last_printed_one(tmp_path):
    short = Machine(make_spec(name="lab", state_dir=str(tmp_path)), "pbx1")
    assert short.host_veth() == "vb-lab-pbx1"                 # fits in 15 characters: no rename
    long = Machine(make_spec(state_dir=str(tmp_path)), "pbx2")
    assert long.host_veth() == ""                              # never started: nothing to wait for
    long.dir.mkdir(parents=True)
    said = "Network interface name 'vb-{}' has been changed to '{}' to fit length constraints.\n"
    long.console_log.write_text(said.format(long.machine, "vb-hapbx-uoLD1x") + "...\n"
                                + said.format(long.machine, "vb-hapbx-uq9Zz0"))
    assert long.host_veth() == "vb-hapbx-uq9Zz0"
