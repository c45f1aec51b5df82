"""The policy's [keys] section and a rule's cost from the request: read, and refused with the
key path when they cannot work."""

from __future__ import annotations

import pytest

from ratekeeper.errors import PolicyError
from ratekeeper.policy import load_policy, loads_policy, preset_path
from ratekeeper.stores.registry import key_digest

HEAD = 'apply = ["api"]\n[limits.api]\nrates = "10/minute"\n[plans.gold]\napi = "100/minute"\n'


def test_keys_are_read_hashed_with_their_plan_account_and_label() -> None:
    policy = loads_policy(
        HEAD + '[keys]\nunknown = "ip"\n[[keys.known]]\nkey = "secret-1"\nplan = "gold"\n'
        'label = "Partner, Inc."\n[[keys.known]]\nhash = "' + "ab" * 12 + '"\naccount = "s1"\n'
    )
    assert policy.keys.unknown == "ip"
    first, second = policy.keys.known
    assert first.digest == key_digest("secret-1") and first.plan == "gold"
    assert "secret-1" not in repr(policy)
    assert second.account == "s1"


def test_no_keys_section_means_every_key_has_its_own_budget() -> None:
    assert loads_policy(HEAD).keys.unknown == "own"
    assert loads_policy(HEAD + "[keys]\n").keys.unknown == "refuse"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[keys]\nunknown = "maybe"', "keys.unknown"),
        ('[[keys.known]]\nlabel = "x"', "keys.known[0].key"),
        ('[[keys.known]]\nkey = "a"\nplan = "platinum"', "keys.known[0].plan"),
        ('[[keys.known]]\nhash = "sk_live_x"', "keys.known[0].hash"),
        ('[[keys.known]]\nkey = "a"\n[[keys.known]]\nkey = "a"', "keys.known[1]"),
        ('[[keys.known]]\nkey = "a"\nlabel = "two\\nlines"', "keys.known[0]"),
        ('[[rules]]\nroutes = ["/b"]\ncost_header = "X-Count"', "rules[0].max_cost"),
        ('[[rules]]\nroutes = ["/b"]\ncost_query = "n"\nmax_cost = 0', "rules[0].max_cost"),
        ('[[rules]]\nroutes = ["/b"]\ncost_header = "bad header"\nmax_cost = 5', "cost_header"),
        ('[[rules]]\nroutes = ["/b"]\nmax_cost = 5', "rules[0].max_cost"),
    ],
)
def test_what_cannot_work_is_refused_with_its_key_path(text: str, where: str) -> None:
    with pytest.raises(PolicyError, match=where.replace("[", r"\[").replace("]", r"\]")):
        loads_policy(HEAD + text)


def test_a_rule_may_take_its_cost_from_a_header_or_the_query() -> None:
    rule = loads_policy(
        HEAD + '[[rules]]\nroutes = ["/batch"]\ncost_header = "X-Batch-Size"\nmax_cost = 8\n'
    ).rules[0]
    assert (rule.cost_header, rule.max_cost) == ("x-batch-size", 8)


def test_the_radio_preset_maps_demo_keys_to_demo_streams() -> None:
    keys = load_policy(preset_path("radio")).keys
    accounts = {r.digest: r.account for r in keys.known}
    assert accounts[key_digest("radio-demo-a1")] == accounts[key_digest("radio-demo-a2")]
    assert accounts[key_digest("radio-demo-b1")] != accounts[key_digest("radio-demo-a1")]
