"""Classes of dialled numbers (components/render/dialing.py): the one answer Kamailio and
FreeSWITCH both render, checked by classifying numbers the way both match them (first rule wins)."""
import re

import pytest

from components.config import build
from components.render.dialing import CALL_CLASSES, allowed_callers, dial_rules
from hapbx_node.cdr import validate
from tests.mockrun import stack_config


def classify(rules, number: str) -> tuple[str, str]:
    for rule in rules:
        if re.search(rule.regex, number):
            return rule.dial_class, rule.trunk
    return "internal", ""


def dialplan(trunks, queues=()):
    raw = stack_config("lab")
    raw["dialplan"] = {"trunks": trunks, "queues": list(queues)}
    cluster, _ = build(raw)
    return cluster.dialplan


@pytest.mark.parametrize("number,expected", [
    ("1001", ("internal", "")),                      # a user
    ("8000", ("internal", "")),                      # a queue
    ("0301234567", ("national", "carrier")),
    ("0049301234567", ("international", "carrier")),
    ("0900123456", ("premium", "carrier")),
    ("0137123", ("premium", "carrier")),
    ("+4930123", ("international", "backup")),       # on the '' route: nothing listed for '+'
    ("12", ("international", "backup")),
])
def test_numbers_are_classed_by_the_trunk_that_takes_them(number, expected):
    plan = dialplan([{"name": "carrier", "host": "198.51.100.20", "prefixes": ["0"], "nationalPrefixes": ["0"],
                      "internationalPrefixes": ["00"], "premiumPrefixes": ["0900", "0137"]},
                     {"name": "backup", "host": "198.51.100.21", "prefixes": [""]}],
                    queues=[{"number": "8000", "name": "support"}])
    assert classify(dial_rules(plan), number) == expected


def test_a_trunk_without_class_prefixes_carries_international_calls_only():
    plan = dialplan([{"name": "any", "host": "198.51.100.20", "prefixes": [""]}])
    assert classify(dial_rules(plan), "0301234567") == ("international", "any")
    assert allowed_callers("international") == ("international", "premium")


def test_one_list_of_classes_in_kamailio_freeswitch_and_the_admin_api():
    assert CALL_CLASSES == validate.CALL_CLASSES == ("internal", "national", "international", "premium")
    assert [allowed_callers(c)[0] for c in CALL_CLASSES] == list(CALL_CLASSES)


def test_exclusive_rules_match_once_and_agree_with_the_first_match():
    """FreeSWITCH evaluates every gate: each number must meet exactly the rule Kamailio's first
    match gives it, never a looser or stricter one besides."""
    from components.render.dialing import exclusive
    plan = dialplan([{"name": "carrier", "host": "198.51.100.20", "prefixes": ["0"], "nationalPrefixes": ["0", "0049"],
                      "internationalPrefixes": ["00"], "premiumPrefixes": ["0900"]},
                     {"name": "backup", "host": "198.51.100.21", "prefixes": [""]}])
    rules = dial_rules(plan)
    for number in ("1001", "0301234", "0049301234", "0033123", "0900123", "+4930", "77"):
        hits = [r for r in exclusive(rules) if re.search(r.regex, number)]
        assert len(hits) <= 1, (number, hits)
        got = (hits[0].dial_class, hits[0].trunk) if hits else ("internal", "")
        assert got == classify(rules, number), number
    assert classify(rules, "0049301234") == ("national", "carrier")
