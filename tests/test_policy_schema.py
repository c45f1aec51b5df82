"""Policy files: what is accepted, and errors that name the file, the key path and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from ratekeeper.errors import PolicyError
from ratekeeper.http.compiled import compile_policy, compile_rule
from ratekeeper.http.engine import Enforcer
from ratekeeper.policy import (
    load_policy,
    loads_policy,
    parse_duration,
    preset_path,
)

BASE = """
apply = ["api"]
[limits.api]
rates = "100/minute"
"""


@pytest.mark.parametrize("name", ["musique", "beatpass", "radio", "musicbrainz", "aisoule"])
def test_presets_load_and_compile(name: str) -> None:
    plan = compile_policy(load_policy(preset_path(name)))
    assert plan.policy.limits


def test_unknown_preset() -> None:
    with pytest.raises(PolicyError, match=r"no preset named 'nope': expected one of .*musique"):
        preset_path("nope")


def test_defaults() -> None:
    policy = loads_policy(BASE)
    assert policy.store == "memory://"
    assert policy.body == "plain"
    assert policy.identity.source == "ip"
    assert policy.limits["api"].limit_set is not None
    assert policy.limits["api"].limit_set.limits[0].amount == 100


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("apply = [", r"f\.toml: not valid TOML"),
        ("apply = []", r"f\.toml: limits: expected at least one \[limits.<name>\] table"),
        (
            "typo = 1" + "\n" + BASE,
            r"f\.toml: typo: expected one of the known keys \(apply, .*\): unknown key",
        ),
        (
            BASE.replace("100/minute", "0/minute"),
            r"f\.toml: limits\.api\.rates: expected a valid limit: .*amount",
        ),
        (
            BASE.replace("100/minute", "100/fortnight"),
            r"f\.toml: limits\.api\.rates: expected a valid limit: .*unknown unit",
        ),
        (
            BASE + 'algorithm = "leaky"',
            r"f\.toml: limits\.api\.algorithm: expected one of fixed_window, first_hit_window, "
            r"sliding_window, gcra; got 'leaky'",
        ),
        (
            BASE + "burst = 3",
            r"limits\.api\.rates: expected a valid limit: burst=3 .* 'gcra' algorithm only",
        ),
        (BASE + 'scope = "planet"', r"limits\.api\.scope: expected one of caller, key"),
        (BASE + "status = 200", r"limits\.api\.status: expected a whole number >= 400"),
        (BASE + "in_flight = 3", r"limits\.api\.in_flight: expected in_flight only with scope"),
        (BASE + "[limits.other]\nalgorithm = 'gcra'", r"limits\.other\.rates: expected .*missing"),
        (
            BASE + "[[rules]]\nroutes = ['/a']\nlimits = ['media']",
            r"rules\[0\]\.limits: expected names of \[limits\] tables \(api\) or rates "
            r"such as '5/minute'; got 'media'",
        ),
        (BASE + "[[rules]]\nroutes = ['a']", r"rules\[0\]\.routes: expected a route starting"),
        (BASE + "[[rules]]\nroutes = ['/a/*/b']", r"rules\[0\]\.routes: expected '\*' only"),
        (BASE + "[[rules]]\nroutes = ['/a/x{id}']", r"expected a whole-segment parameter"),
        (BASE + "[[rules]]\nroutes = ['/a']\nmethods = ['FETCH']", r"rules\[0\]\.methods"),
        (BASE + "[[rules]]\nroutes = ['/a']\ncost = 0", r"rules\[0\]\.cost: expected a whole"),
        (BASE + "[[rules]]\nroutes = ['/a']\ncache_ttl = 'soon'", r"rules\[0\]\.cache_ttl"),
        ("rules = 3" + "\n" + BASE, r"rules: expected an array of tables"),
        ('apply = ["nope"]\n[limits.api]\nrates = "1/s"', r"apply: expected names of \[limits\]"),
        ('body = "xml"' + "\n" + BASE, r"body: expected one of plain, musique"),
        ('body = "template"' + "\n" + BASE, r"body_template: expected a template string"),
        (
            "body = 'template'\nbody_template = '{oops}'" + "\n" + BASE,
            r"body_template: expected a template using only",
        ),
        ("shadow = 'yes'" + "\n" + BASE, r"shadow: expected true or false, got 'yes'"),
        ("usage_path = 'limits'" + "\n" + BASE, r"usage_path: expected a path starting with '/'"),
        ("exempt_ips = ['10.0.0.300']" + "\n" + BASE, r"exempt_ips: expected IP addresses"),
        (BASE + "[identity]\nsource = 'jwt'", r"identity\.source: expected one of api_key"),
        (BASE + "[identity]\ntrusted_proxies = ['x']", r"identity\.trusted_proxies: expected"),
        (BASE + "[identity]\nsource = 'callable'", r"identity\.callable: expected 'package"),
        (BASE + "[identity]\ncallable = 'no colon'", r"identity\.callable: expected 'package"),
        (BASE + "[identity]\nkey_headers = ['X Key']", r"identity\.key_headers: expected header"),
        (BASE + "[plans.gold]\nmedia = '1/s'", r"plans\.gold\.media: expected the name of a"),
        (BASE + "[plans.gold]\napi = 'lots'", r"plans\.gold\.api: expected a valid limit"),
        (BASE + "[tiers]\nkeys = { k = 'gold' }", r"tiers\.keys: expected plan names"),
        (BASE + "[lockout]\nwindow = '1m'", r"lockout\.failures: expected the number"),
        (BASE + "[lockout]\nfailures = 3\nstatuses = [200]", r"lockout\.statuses: expected"),
        (
            BASE + "[lockout]\nfailures = 3\nduration = 0",
            r"lockout\.duration: expected a duration above 0",
        ),
        (BASE + "[cache]\nvary = 'user'", r"cache\.vary: expected one of caller, none"),
        ("[limits]\napi = 3", r"limits\.api: expected a table, got a number"),
        (
            "ietf_partition_key = true" + "\n" + BASE,
            r"f\.toml: ietf_partition_key: expected ietf_headers = true as well",
        ),
        (
            "ietf_headers = true\nietf_partition_key_secret = 's'" + "\n" + BASE,
            r"ietf_partition_key_secret: expected ietf_partition_key = true as well",
        ),
        (
            "on_store_error = 'ignore'" + "\n" + BASE,
            r"on_store_error: expected one of fail_open, fail_closed, fallback, .*'ignore'",
        ),
    ],
)
def test_errors_name_file_key_path_and_expectation(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        loads_policy(text, "f.toml")


def test_secret_keys_never_appear_in_errors() -> None:
    text = BASE + "[identity]\naccounts = { 'sk_live_secret' = 3 }"
    with pytest.raises(PolicyError) as info:
        loads_policy(text, "f.toml")
    assert "sk_live_secret" not in str(info.value)
    assert "identity.accounts" in str(info.value)


def test_files_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"missing\.toml: cannot read the policy file"):
        load_policy(tmp_path / "missing.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00apply")
    with pytest.raises(PolicyError, match=r"binary\.toml: expected a UTF-8 text file"):
        load_policy(binary)


def test_hooks_are_imported_at_compile_time() -> None:
    text = BASE + "[identity]\nsource = 'callable'\ncallable = 'no_such_module_x:fn'"
    with pytest.raises(PolicyError, match=r"f\.toml: identity\.callable: expected an importable"):
        compile_policy(loads_policy(text, "f.toml"))
    text = BASE + "[tiers]\nhook = 'ratekeeper.rates:nothing_here'"
    with pytest.raises(PolicyError, match=r"tiers\.hook: expected an importable function"):
        compile_policy(loads_policy(text, "f.toml"))
    text = BASE + "[tiers]\nhook = 'ratekeeper.rates:__all__'"
    with pytest.raises(PolicyError, match=r"tiers\.hook: expected a callable"):
        compile_policy(loads_policy(text, "f.toml"))


def test_store_url_errors_hide_passwords() -> None:
    policy = loads_policy('store = "nosuch://user:hunter2@host/0"' + "\n" + BASE, "f.toml")
    with pytest.raises(PolicyError, match=r"f\.toml: store: expected a usable store URL") as info:
        Enforcer(policy)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(30, 30.0), ("30s", 30.0), ("15 minutes", 900.0), ("2h", 7200.0), ("1.5d", 129600.0)],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", [True, "-1s", "10 parsecs", [], float("inf")])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


def test_a_rate_string_stands_for_a_limit_of_its_own() -> None:
    policy = loads_policy(BASE, "f.toml")
    rule = compile_rule(
        policy, "items", ["5/minute; 100/hour"], cost=1, cache_ttl_s=0.0, shadow_rule=False
    )
    (api, _), (own, scope) = rule.enforced
    assert api.name == "api"
    assert (own.name, scope) == ("items 5/minute; 100/hour", "caller")
    assert [limit.amount for limit in own.limits] == [5, 100]
    with pytest.raises(PolicyError, match=r"f\.toml: limit 'nope' of 'items': expected one of"):
        compile_rule(policy, "items", ["nope"], cost=1, cache_ttl_s=0.0, shadow_rule=False)
    with pytest.raises(PolicyError, match=r"limit '5/fortnight' .* unknown unit 'fortnight'"):
        compile_rule(policy, "items", ["5/fortnight"], cost=1, cache_ttl_s=0.0, shadow_rule=False)


def test_a_rate_in_a_rule_is_that_rules_own_limit() -> None:
    policy = loads_policy(
        """
[[rules]]
name = "shows"
routes = ["/shows/{id}"]
limits = ["5/minute"]
[[rules]]
routes = ["/episodes"]
limits = ["5/minute", "api"]
[limits.api]
rates = "100/minute"
""",
        "f.toml",
    )
    assert [rule.limits for rule in policy.rules] == [
        ("shows 5/minute",),
        ("/episodes 5/minute", "api"),
    ]
    assert policy.limits["shows 5/minute"].scope == "caller"
    plan = compile_policy(policy)
    ((own, _),) = plan.routes.match("GET", "/shows/7").enforced
    assert [limit.amount for limit in own.limits] == [5]
    with pytest.raises(PolicyError, match=r"f\.toml: apply: expected .* unknown unit 'fortnight'"):
        loads_policy('apply = ["5/fortnight"]', "f.toml")
