from __future__ import annotations

import pytest
from fmesh.broker.filter_keys import Key
from fmesh.broker.filters import FilterError, any_of, compile_dialect, compile_filters, compile_shorthand
from fmesh.broker.router import Router

EVENT = {"specversion": "1.0", "id": "1", "type": "com.shop.order.created", "source": "/web/eu",
         "subject": "order-7", "region": "eu", "amount": 250, "vip": True}


@pytest.mark.parametrize(("spec", "expected"), [
    ({"type": "com.shop.order.created"}, True),
    ({"type": "com.shop.order"}, False),
    ({"type": {"prefix": "com.shop."}}, True),
    ({"type": {"suffix": ".created"}}, True),
    ({"type": {"exact": "com.shop.order.created"}, "source": {"prefix": "/web"}}, True),
    ({"type": "com.shop.order.created", "source": "/mobile"}, False),
    ({"region": "eu"}, True),                 # extensions filter like attributes
    ({"amount": "250"}, True),                # compared in their CloudEvents string form
    ({"vip": "true"}, True),
    ({"missing": "x"}, False),
    ({"missing": {"prefix": ""}}, False),     # an absent attribute never matches
    ({}, True),
])
def test_shorthand(spec, expected):
    assert compile_shorthand(spec)(EVENT) is expected


@pytest.mark.parametrize(("spec", "expected"), [
    ([{"exact": {"type": "com.shop.order.created"}}], True),
    ([{"prefix": {"type": "com.shop", "source": "/web"}}], True),
    ([{"suffix": {"subject": "-7"}}], True),
    ([{"all": [{"prefix": {"type": "com."}}, {"exact": {"region": "eu"}}]}], True),
    ([{"all": [{"prefix": {"type": "com."}}, {"exact": {"region": "us"}}]}], False),
    ([{"any": [{"exact": {"region": "us"}}, {"exact": {"region": "eu"}}]}], True),
    ([{"any": [{"exact": {"region": "us"}}, {"exact": {"region": "ap"}}]}], False),
    ([{"not": {"exact": {"region": "us"}}}], True),
    ([{"not": {"prefix": {"type": "com.shop"}}}], False),
    ([{"exact": {"type": "com.shop.order.created"}}, {"exact": {"region": "us"}}], False),
])
def test_knative_dialects(spec, expected):
    assert compile_filters(spec)(EVENT) is expected


@pytest.mark.parametrize(("spec", "message"), [
    ([{"exakt": {"type": "x"}}], "filters[0]: unknown filter dialect 'exakt'"),
    ([{"all": []}], "filters[0].all: expected a non-empty list"),
    ([{"any": [{"exact": {"Type": "x"}}]}], "filters[0].any[0].exact.Type: 'Type' is not a CloudEvents attribute"),
    ([{"exact": {"type": {"nested": 1}}}], "filters[0].exact.type: expected a string"),
    ({"exact": {"type": "x"}}, "filters: expected a list of filters"),
    ([{"exact": {"type": "x"}, "prefix": {"type": "y"}}], "filters[0]: expected exactly one of"),
])
def test_bad_filters_name_where_they_are_wrong(spec, message):
    with pytest.raises(FilterError) as error:
        compile_filters(spec)
    assert message in str(error.value)


def test_shorthand_rejects_unknown_matchers():
    with pytest.raises(FilterError, match=r"type: expected one of \{exact\|prefix\|suffix"):
        compile_shorthand({"type": {"prefx": "x"}})


def test_index_keys_are_derived_from_the_filter():
    assert compile_shorthand({"type": "a"}).keys == ((Key("type", "exact", "a"),),)
    assert compile_shorthand({"type": {"prefix": "a"}}).keys == ((Key("type", "prefix", "a"),),)
    assert compile_dialect({"any": [{"exact": {"type": "a"}}, {"suffix": {"source": "b"}}]}, "f").keys == (
        (Key("type", "exact", "a"), Key("source", "suffix", "b")),)
    assert compile_dialect({"all": [{"exact": {"type": "a"}}, {"prefix": {"source": "/"}}]}, "f").keys == (
        (Key("type", "exact", "a"),), (Key("source", "prefix", "/"),))
    assert compile_dialect({"any": [{"exact": {"type": "a"}}, {"not": {"exact": {"type": "b"}}}]}, "f").keys == ()
    assert compile_dialect({"not": {"exact": {"type": "a"}}}, "f").keys == ()
    assert any_of([]).keys == ((),)  # matches nothing: filed under no key at all


@pytest.mark.parametrize(("expression", "keys"), [
    ("type = 'a'", [[("type", "exact", "a")]]),
    ("type = 'a' AND source LIKE '/web/%'", [[("type", "exact", "a")], [("source", "prefix", "/web/")]]),
    ("type LIKE 'com.%.created'", [[("type", "prefix", "com.")], [("type", "suffix", ".created")]]),
    ("type LIKE 'a\\%b'", [[("type", "exact", "a%b")]]),           # an escaped wildcard is literal text
    ("type LIKE 'a_b%'", [[("type", "prefix", "a")]]),               # only what comes before the first wildcard
    ("(type = 'a' OR type = 'b') AND NOT (source = 'x')", [[("type", "exact", "a"), ("type", "exact", "b")]]),
    ("region IN ('eu', 'us')", [[("region", "exact", "eu"), ("region", "exact", "us")]]),
    ("n IN ('5', '05')", []),               # '05' = an integer 5 as well: not the text '5'
    ("flag IN ('TRUE')", []),               # the boolean true, whose text is 'true'
    ("n = 5", []),                          # compared as integers: '05' matches too
    ("'a' = type", []),                     # the right operand's type decides: not indexed
    ("type = 'a' OR EXISTS region", []),    # one branch without a key: nothing to index by
    ("NOT type = 'a'", []),
    ("type NOT LIKE 'a%'", []),
    ("type != 'a'", []),
    ("LOWER(type) = 'a'", []),
    ("type LIKE '%'", []),
])
def test_cesql_index_keys(expression, keys):
    assert compile_dialect({"cesql": expression}, "f").keys == tuple(tuple(Key(*k) for k in a) for a in keys)


def test_router_matches_indexed_and_unindexed_subscriptions():
    router = Router()
    router.set("orders", compile_shorthand({"type": "com.shop.order.created"}))
    router.set("shop", compile_shorthand({"type": {"prefix": "com.shop."}}))
    router.set("eu", compile_filters([{"exact": {"region": "eu"}}]))
    router.set("other", compile_shorthand({"type": "com.other"}))
    assert sorted(router.match(EVENT)) == ["eu", "orders", "shop"]
    router.set("orders", compile_shorthand({"type": "com.other"}))  # replacing a filter re-indexes it
    assert sorted(router.match(EVENT)) == ["eu", "shop"]
    router.remove("eu")
    assert sorted(router.match(EVENT)) == ["shop"]
    assert "eu" not in router and "shop" in router
