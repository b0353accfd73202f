"""Where a dialled number goes and what class of call it is: one answer for Kamailio (which
refuses a call its extension's class of service does not allow) and for FreeSWITCH (which routes
it to a trunk and checks the class again for calls it transfers).

Classes of service, lowest first, are the rows of pbx.call_classes (migration 007): an extension
of class X may dial every class up to X. Our own numbers (users, queues, IVRs) are internal; a
number a trunk takes is classed by that trunk's nationalPrefixes / internationalPrefixes /
premiumPrefixes (longest first); one it takes that no class prefix names is international.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

#: classes of service, lowest first (pbx.call_classes by rank)
CALL_CLASSES = ("internal", "national", "international", "premium")
#: the class of a number a trunk takes that none of its class prefixes names
UNLISTED_CLASS = "international"


def routes_by_prefix(dialplan) -> list[tuple[str, list]]:
    """(dialled prefix, trunks taking it in order), longest prefix first, '' last: the order in
    which FreeSWITCH's outbound extensions match."""
    by_prefix: dict[str, list] = {}
    for t in dialplan.trunks:
        for p in t.prefixes:
            by_prefix.setdefault(p, []).append(t)
    return [(p, by_prefix[p]) for p in sorted(by_prefix, key=lambda p: (-len(p), p))]


def allowed_callers(dial_class: str) -> tuple[str, ...]:
    """The classes of service that may dial a number of ``dial_class``."""
    return CALL_CLASSES[CALL_CLASSES.index(dial_class):]


@dataclass(frozen=True)
class DialRule:
    """A dialled number matching ``regex`` (POSIX ERE: Kamailio's =~, and PCRE alike) is of
    ``dial_class`` and leaves through ``trunk`` ('' for our own numbers)."""
    regex: str
    dial_class: str
    trunk: str = ""


def _ere(prefix: str) -> str:
    return prefix.replace("+", "[+]")


def dial_rules(dialplan) -> list[DialRule]:
    """First match wins: our own numbers, then each outbound route (as FreeSWITCH orders them)
    by its first trunk's class prefixes, longest first, then the route's unlisted numbers."""
    rules = [DialRule(dialplan.user_pattern, "internal")]
    own = [x.number for x in (*dialplan.queues, *dialplan.ivrs)]
    if own:
        rules.append(DialRule(f"^({'|'.join(own)})$", "internal"))
    for prefix, trunks in routes_by_prefix(dialplan):
        trunk = trunks[0]
        rest = "[+]?[0-9]+$" if prefix == "" else "[0-9]*$"
        by_length = sorted(((p, cls) for cls in CALL_CLASSES[1:] for p in getattr(trunk, f"{cls}_prefixes")),
                           key=lambda pc: (-len(pc[0]), pc[0]))
        for class_prefix, cls in by_length:
            if class_prefix.startswith(prefix) and class_prefix != prefix:
                rules.append(DialRule(f"^{_ere(class_prefix)}[0-9]*$", cls, trunk.name))
            elif prefix.startswith(class_prefix):
                rules.append(DialRule(f"^{_ere(prefix)}{rest}", cls, trunk.name))
                break  # every number of the route is classed: nothing reaches the default
        else:
            rules.append(DialRule(f"^{_ere(prefix)}{rest}", UNLISTED_CLASS, trunk.name))
    return rules


def trunk_addresses(trunk) -> list[str]:
    """Where a trunk's calls come from: its ``addresses``, else its host when that is an address
    (a name is never resolved into an ACL or a firewall rule)."""
    if trunk.addresses:
        return list(trunk.addresses)
    try:
        return [str(ipaddress.ip_address(trunk.host))]
    except ValueError:
        return []


def exclusive(rules: list[DialRule]) -> list[DialRule]:
    """The same rules for a matcher that tries them all (FreeSWITCH's continuing extensions):
    each regex also refuses what an earlier rule took (a PCRE negative lookahead)."""
    out = []
    for i, rule in enumerate(rules):
        earlier = "|".join(f"(?:{r.regex.removeprefix('^')})" for r in rules[:i])
        regex = f"^(?!{earlier}){rule.regex.removeprefix('^')}" if earlier else rule.regex
        out.append(DialRule(regex, rule.dial_class, rule.trunk))
    return out


def all_trunk_addresses(dialplan) -> list[str]:
    """Every address a trunk's calls may come from, first seen first (the inbound ACL, the firewall)."""
    out: list[str] = []
    for t in dialplan.trunks:
        out += [a for a in trunk_addresses(t) if a not in out]
    return out
