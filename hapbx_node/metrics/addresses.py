"""Whether an address is on one of this node's interfaces (the VIP: hapbx_vip_owner), from the
kernel's tables of this network namespace. Not by binding to it: the nodes set
net.ipv4.ip_nonlocal_bind, so a bind succeeds for any address."""
from __future__ import annotations

import ipaddress

FIB_TRIE = "/proc/net/fib_trie"
IF_INET6 = "/proc/net/if_inet6"


def local_ipv4(fib_trie: str) -> set[str]:
    """The host addresses of the local routing table (each "/32 host LOCAL" leaf)."""
    out, last = set(), ""
    for line in fib_trie.splitlines():
        text = line.strip()
        if text.startswith(("|--", "+--")):
            last = text[3:].split()[0]
        elif text.startswith("/32 host LOCAL"):
            out.add(last)
    return out


def local_ipv6(if_inet6: str) -> set[str]:
    out = set()
    for line in if_inet6.splitlines():
        fields = line.split()
        if fields and len(fields[0]) == 32:
            out.add(str(ipaddress.IPv6Address(bytes.fromhex(fields[0]))))
    return out


def is_local(address: str) -> bool | None:
    """True or False, None when the kernel's table cannot be read or the address is not one."""
    try:
        ip = ipaddress.ip_address(address)
        path = FIB_TRIE if ip.version == 4 else IF_INET6
        with open(path, encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except (ValueError, OSError):
        return None
    return str(ip) in (local_ipv4(text) if ip.version == 4 else local_ipv6(text))
