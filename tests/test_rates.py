import pytest

from ratekeeper import (
    Limit,
    LimitConfigError,
    LimitSet,
    Rate,
    RateSyntaxError,
    parse_rate,
    parse_rates,
)


@pytest.mark.parametrize(
    ("text", "amount", "period"),
    [
        ("100/minute", 100, 60.0),
        ("1000/hour", 1000, 3600.0),
        ("10000/day", 10000, 86400.0),
        ("60/60s", 60, 60.0),
        ("5/second", 5, 1.0),
        ("1/2s", 1, 2.0),
        ("10 per 2 seconds", 10, 2.0),
        (" 3 / 1.5h ", 3, 5400.0),
        ("300/MINUTE", 300, 60.0),
    ],
)
def test_parse_rate_reads_the_forms_people_write(text: str, amount: int, period: float) -> None:
    assert parse_rate(text) == Rate(amount, period)


@pytest.mark.parametrize(
    "text",
    ["", "100", "100/", "/minute", "abc/minute", "100/fortnight", "0/minute", "-1/minute", "1/0s"],
)
def test_bad_rate_text_is_quoted_in_the_error(text: str) -> None:
    with pytest.raises(RateSyntaxError) as info:
        parse_rate(text)
    assert repr(text) in str(info.value) or "must be" in str(info.value)


def test_unknown_unit_names_the_known_ones() -> None:
    with pytest.raises(RateSyntaxError, match=r"unknown unit 'fortnight'.*minute"):
        parse_rate("1/fortnight")


def test_parse_rates_splits_on_separators() -> None:
    assert parse_rates("100/minute; 1000/hour, 10000/day") == (
        Rate(100, 60.0),
        Rate(1000, 3600.0),
        Rate(10000, 86400.0),
    )
    with pytest.raises(RateSyntaxError):
        parse_rates(" ; ")


def test_rate_str_round_trips() -> None:
    for text in ["100/minute", "5/second", "2/2s", "7/day"]:
        assert str(parse_rate(text)) == text


def test_limit_validates_burst_and_algorithm() -> None:
    with pytest.raises(LimitConfigError, match="unknown algorithm 'leaky'"):
        Limit.parse("1/second", "leaky")
    with pytest.raises(LimitConfigError, match="burst applies to the 'gcra' algorithm only"):
        Limit.parse("10/second", "fixed_window", burst=3)
    assert Limit.parse("300/minute", "gcra", burst=5).burst == 5
    assert Limit.parse("300/minute", "token-bucket").burst == 300


def test_limit_set_ids_follow_names_and_algorithms_not_numbers() -> None:
    a = LimitSet("api", "100/minute")
    b = LimitSet("api", "200/minute")
    assert a.id == b.id and a.spec_id != b.spec_id
    assert a.id != LimitSet("api", "100/minute", algorithm="sliding_window").id
    assert a.id != LimitSet("api", "100/hour").id
    assert a.id != LimitSet("other", "100/minute").id
    with pytest.raises(LimitConfigError, match="two limits named alike"):
        LimitSet("api", "1/minute; 2/minute")
    with pytest.raises(LimitConfigError, match="non-empty name"):
        LimitSet("a:b", "1/minute")
