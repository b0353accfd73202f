"""The HA core's own gratuitous ARP (drivers.send_garp): what a holder sends when the peer claimed
the VIP and its own keepalived may be frozen. Sent from one end of a veth pair in a network
namespace this test makes, received on the other end: the frame a neighbour updates its cache
from (RFC 5227 announcement: sender and target address the VIP, sender MAC the interface's)."""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VIP = "10.254.77.10"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def veth():
    tag = uuid.uuid4().hex[:6]
    ns, a, b = f"hapbx-garp-{tag}", f"hgA{tag}", f"hgB{tag}"
    ip("netns", "add", ns)
    try:
        ip("link", "add", a, "type", "veth", "peer", "name", b)
        ip("link", "set", a, "netns", ns)
        ip("-n", ns, "link", "set", a, "up")
        ip("link", "set", b, "up")
        yield ns, a, b
    finally:
        subprocess.run(["ip", "link", "del", b], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_the_holder_announces_the_vip_with_its_own_mac(veth):
    ns, a, b = veth
    mac = subprocess.run(["ip", "netns", "exec", ns, "cat", f"/sys/class/net/{a}/address"], check=True,
                         capture_output=True, text=True).stdout.strip()
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806)) as rx:
        rx.bind((b, 0))
        rx.settimeout(5)
        code = f"import sys; sys.path.insert(0, {ROOT!r}); from hapbx_node.ha import drivers; " \
               f"drivers.send_garp({a!r}, {VIP!r})"
        subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], check=True, capture_output=True)
        frame = rx.recv(2048)
    dst, src, ethertype = frame[:6], frame[6:12], struct.unpack("!H", frame[12:14])[0]
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = struct.unpack("!HHBBH6s4s6s4s", frame[14:42])
    assert ethertype == 0x0806 and dst == b"\xff" * 6
    assert src.hex(":") == mac and sha.hex(":") == mac
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 1)
    assert socket.inet_ntoa(spa) == VIP and socket.inet_ntoa(tpa) == VIP   # an announcement, not a question
    assert tha == b"\x00" * 6
