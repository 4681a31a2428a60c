"""The router's indexes narrow the filters it tries, never the matches: on randomized filters
of every dialect and randomized events, it returns exactly what trying each filter does."""

from __future__ import annotations

import datetime
import re

from fmesh.broker import router as router_module
from fmesh.broker.filter_keys import Key
from fmesh.broker.filters import Filter, any_of, compile_dialect, compile_shorthand
from fmesh.broker.router import Router, passes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ATTRIBUTES = ("type", "source", "subject", "region", "n", "flag")  # region, n, flag: extensions
texts = st.text(alphabet="ab.", max_size=2)  # few values: random events hit random filters often
scalars = st.one_of(texts, st.integers(-1, 6), st.booleans())


# -- filters ----------------------------------------------------------------------------------

def attribute_specs() -> st.SearchStrategy:
    return st.builds(lambda kind, name, value: {kind: {name: value}},
                     st.sampled_from(["exact", "prefix", "suffix"]), st.sampled_from(ATTRIBUTES), scalars)


def quoted(text: str) -> str:
    return f"'{text}'"


patterns = st.lists(st.sampled_from(["a", "b", ".", "%", "_", "\\%", "\\_"]), max_size=5).map("".join)
identifiers = st.sampled_from(ATTRIBUTES)
strings = st.one_of(texts.map(quoted), st.sampled_from(["'TRUE'", "'true'", "'5'", "'05'", "'-0'"]))
literals = st.one_of(strings, st.integers(-1, 6).map(str), st.sampled_from(["TRUE", "false"]))
indexable = st.one_of(  # shapes that have keys, unless a cast makes them unsafe ('05')
    st.builds("{} = {}".format, identifiers, strings),
    st.builds("{} LIKE '{}'".format, identifiers, patterns),
    st.builds(lambda name, items: f"{name} IN ({', '.join(items)})", identifiers, st.lists(strings, min_size=1,
                                                                                          max_size=3)),
)
others = st.one_of(
    st.builds("{} = {}".format, identifiers, literals),
    st.builds("{} = {}".format, literals, identifiers),
    st.builds("{} != {}".format, identifiers, literals),
    st.builds("{} NOT LIKE '{}'".format, identifiers, patterns),
    st.builds(lambda name, items: f"{name} IN ({', '.join(items)})", identifiers, st.lists(literals, min_size=1,
                                                                                          max_size=3)),
    st.builds("EXISTS {}".format, identifiers),
    st.builds("INT({}) > 3".format, identifiers),
    st.sampled_from(["TRUE", "FALSE"]),
)
atoms = st.one_of(indexable, indexable, others)
expressions = st.recursive(atoms, lambda inner: st.one_of(
    st.builds("({}) AND ({})".format, inner, inner),
    st.builds("{} AND {}".format, inner, inner),
    st.builds("{} OR {}".format, inner, inner),
    st.builds("NOT ({})".format, inner),
    st.builds("({}) XOR ({})".format, inner, inner),
), max_leaves=5)

dialect_specs = st.recursive(
    st.one_of(attribute_specs(), expressions.map(lambda text: {"cesql": text})),
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda specs: {"all": specs}),
        st.lists(inner, min_size=1, max_size=3).map(lambda specs: {"any": specs}),
        inner.map(lambda spec: {"not": spec}),
    ), max_leaves=6)

shorthand_specs = st.dictionaries(
    st.sampled_from(ATTRIBUTES),
    st.one_of(scalars, st.builds(lambda kind, value: {kind: value}, st.sampled_from(["exact", "prefix", "suffix"]),
                                 texts)),
    max_size=3)

filters = st.one_of(
    expressions.map(lambda text: compile_dialect({"cesql": text}, "f")),
    dialect_specs.map(lambda spec: compile_dialect(spec, "f")),
    shorthand_specs.map(compile_shorthand),
    st.just(any_of([])),
)

# -- events -----------------------------------------------------------------------------------

odd_values = st.sampled_from([datetime.datetime(2026, 1, 2, 3, 4, 5), b"ab", 2**40])  # not from an ingress
values = st.one_of(texts, texts, texts, st.integers(-1, 6), st.booleans(), st.none(), odd_values)  # None: absent


def satisfying(key: Key) -> st.SearchStrategy:
    """Values that satisfy a key (or just miss it): where a wrong index would show."""
    text = key.value
    found = [text, text[:-1], text[1:]]
    if re.fullmatch(r"-?[0-9]+", text):
        found.append(int(text))
    if text.lower() in ("true", "false"):
        found.append(text.lower() == "true")
    if key.kind == "prefix":
        return st.one_of(texts.map(lambda tail: text + tail), st.sampled_from(found))
    if key.kind == "suffix":
        return st.one_of(texts.map(lambda head: head + text), st.sampled_from(found))
    return st.sampled_from(found)


@st.composite
def events(draw: st.DrawFn, compiled: list[Filter]) -> dict:
    """A random event, then some of the filters' keys made true (or nearly) in it."""
    event = draw(st.fixed_dictionaries({name: values for name in ATTRIBUTES}))
    keys = sorted({key for f in compiled for alternatives in f.keys for key in alternatives})
    for key in draw(st.lists(st.sampled_from(keys), max_size=4)) if keys else ():
        event[key.attribute] = draw(satisfying(key))
    return event


def reference(subscriptions: dict[str, Filter], event: dict) -> list[str]:
    return sorted(name for name, f in subscriptions.items() if f.test(event))


def routed(router: Router, event: dict) -> list[str]:
    matched = router.match(event)
    assert len(matched) == len(set(matched)), "a subscription matched twice"
    return sorted(matched)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(filters, max_size=12), st.data())
def test_router_matches_exactly_what_trying_every_filter_does(compiled, data):
    sample = data.draw(st.lists(events(compiled), min_size=1, max_size=8))
    router, subscriptions = Router(), {}
    for i, f in enumerate(compiled):
        subscriptions[f"s{i}"] = f
        router.set(f"s{i}", f)
    for event in sample:
        assert routed(router, event) == reference(subscriptions, event)
    # replace and remove some, and the index still agrees
    for name in data.draw(st.lists(st.sampled_from(sorted(subscriptions)), max_size=4) if subscriptions
                          else st.just([])):
        if data.draw(st.booleans()):
            subscriptions[name] = data.draw(filters)
            router.set(name, subscriptions[name])
        else:
            subscriptions.pop(name, None)
            router.remove(name)
    for event in sample:
        assert routed(router, event) == reference(subscriptions, event)


# Two compilations of one filter, so each keeps its own error count.
filter_makers = st.one_of(
    expressions.map(lambda text: lambda: compile_dialect({"cesql": text}, "f")),
    dialect_specs.map(lambda spec: lambda: compile_dialect(spec, "f")),
    shorthand_specs.map(lambda spec: lambda: compile_shorthand(spec)),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(filter_makers, st.data())
def test_a_filter_checked_by_its_conditions_answers_and_records_errors_as_its_test(make, data):
    by_conditions, by_test = make(), make()
    for event in data.draw(st.lists(events([by_test]), min_size=1, max_size=6)):
        assert passes(by_conditions, event) == by_test.test(event), (by_test.description, event)
    assert by_conditions.errors.count == by_test.errors.count


def test_only_plain_conjunctions_of_keys_have_conditions():
    def conditions(spec: dict) -> tuple | None:
        return compile_dialect(spec, "f").conditions

    assert conditions({"cesql": "type = 'a' AND source LIKE '/w%' AND subject LIKE '%.png'"}) == (
        Key("type", "exact", "a"), Key("source", "prefix", "/w"), Key("subject", "suffix", ".png"))
    assert conditions({"cesql": "type LIKE 'a\\%'"}) == (Key("type", "exact", "a%"),)
    assert conditions({"all": [{"exact": {"type": "a"}}, {"prefix": {"source": "/w"}}]}) == (
        Key("type", "exact", "a"), Key("source", "prefix", "/w"))
    for spec in ({"cesql": "type LIKE 'a_%'"}, {"cesql": "type LIKE 'a%b'"}, {"cesql": "type = 'a' OR source = 'b'"},
                 {"cesql": "NOT (type = 'a')"}, {"cesql": "'a' = type"}, {"cesql": "n = 5"},
                 {"any": [{"exact": {"type": "a"}}, {"exact": {"type": "b"}}]}, {"not": {"exact": {"type": "a"}}}):
        assert conditions(spec) is None, spec


def index_is_empty(router: Router) -> bool:
    return not (router._filters or router._placed or router._unindexed or router._attributes)


def test_removing_every_subscription_leaves_no_bucket_behind():
    router = Router()
    specs = [{"type": "a"}, {"type": "a", "source": "/web"}, {"type": {"prefix": "com."}},
             {"subject": {"suffix": ".png"}}, {"cesql": "type LIKE 'x%' AND region = 'eu'"},
             {"cesql": "NOT type = 'a'"}, {"filters": [{"any": [{"exact": {"type": "b"}}, {"prefix": {"id": "7"}}]}]}]
    for i, spec in enumerate(specs):
        router.set(f"s{i}", compile_shorthand(spec))
    for i in range(len(specs)):
        router.set(f"s{i}", compile_shorthand({"type": {"suffix": f".v{i}"}}))  # replaced: old keys unfiled
    assert set(router._attributes) == {"type"}
    assert not router._attributes["type"].exact and not router._attributes["type"].prefixes.buckets
    for i in range(len(specs)):
        router.remove(f"s{i}")
    router.remove("never-set")
    assert index_is_empty(router)


def test_prefix_lookups_follow_the_lengths_present():
    router = Router()
    router.set("short", compile_shorthand({"type": {"prefix": "com."}}))
    router.set("long", compile_shorthand({"type": {"prefix": "com.shop."}}))
    router.set("other", compile_shorthand({"type": {"prefix": "org.shop."}}))
    assert router._attributes["type"].prefixes.lengths == (4, 9)
    assert sorted(router.match({"type": "com.shop.order"})) == ["long", "short"]
    assert router.match({"type": "com"}) == []
    router.remove("long")
    assert router._attributes["type"].prefixes.lengths == (4, 9)  # org.shop. still has 9
    router.remove("other")
    assert router._attributes["type"].prefixes.lengths == (4,)


def test_a_filter_is_filed_where_fewest_subscriptions_share_its_bucket():
    router = Router()
    for i in range(3):  # all on one type, told apart by subject
        router.set(f"s{i}", compile_shorthand({"type": "com.shop.order", "subject": f"order-{i}"}))
    assert len(router._attributes["type"].exact["com.shop.order"]) == 1
    assert len(router._attributes["subject"].exact) == 2
    assert router.match({"type": "com.shop.order", "subject": "order-2"}) == ["s2"]


def test_lookups_are_remembered_and_forgotten_when_the_buckets_change():
    router = Router()
    router.set("orders", compile_shorthand({"type": {"prefix": "com.shop."}}))
    assert router.match({"type": "com.shop.order"}) == ["orders"]  # now remembered
    router.set("all-com", compile_shorthand({"type": {"prefix": "com."}}))
    router.set("created", compile_shorthand({"type": {"suffix": ".order"}}))
    router.set("just-this", compile_shorthand({"type": "com.shop.order"}))
    assert sorted(router.match({"type": "com.shop.order"})) == ["all-com", "created", "just-this", "orders"]
    router.remove("orders")
    router.remove("created")
    router.set("just-this", compile_shorthand({"type": "com.shop.other"}))
    assert router.match({"type": "com.shop.order"}) == ["all-com"]


def test_a_flood_of_distinct_values_keeps_the_cache_bounded(monkeypatch):
    monkeypatch.setattr(router_module, "CACHE_SIZE", 8)
    router = Router()
    router.set("orders", compile_shorthand({"type": {"prefix": "com.shop."}}))
    for i in range(50):
        assert router.match({"type": f"com.shop.t{i}"}) == ["orders"]
        assert len(router._attributes["type"]._cache) <= 8
    assert router.match({"type": "org.shop.t1"}) == []
