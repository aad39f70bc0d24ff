"""An item out of stock or gone: the catalog, the candidate pool and the pipeline without Kafka.

A tombstone on ``items`` removes an item; ``available: false`` withdraws it
from serving and keeps its content; ``available: true`` (or a record without
the field) brings it back. Neither is ever offered to anyone once applied.
"""

from __future__ import annotations

from online_models.catalog import Catalog
from online_models.learner import mtl
from producers.contract import CatalogItem, Event, ItemContent, encode_catalog_item, encode_event
from streams.candidates import CandidateConfig, CandidatePool
from streams.checkpoint import from_loadable, to_loadable
from streams.pipeline import Pipeline, RawMessage
from streams.ranking import RankingConfig
from tests.test_pipeline import NOW, SMALL

LAMP = ItemContent("home.lamp", "acme", 20.0)


# ---------------------------------------------------------------- the catalog


def test_a_removed_item_is_forgotten_and_its_events_do_not_bring_it_back():
    catalog = Catalog()
    told: list[tuple[str, ItemContent | None]] = []
    catalog.listen(lambda item, content: told.append((item, content)))
    catalog.describe(CatalogItem("i1", 0, "home.lamp"))
    assert catalog.remove("i1") is True
    assert "i1" not in catalog and told[-1] == ("i1", None) and catalog.was_removed("i1")
    assert catalog.remember("i1", LAMP) is False  # an event's content about it
    assert "i1" not in catalog
    assert catalog.describe(CatalogItem("i1", 0, "home.lamp")) is True  # a catalog record
    assert catalog.offered("i1") and not catalog.was_removed("i1")
    assert catalog.remove("never-seen") is False and catalog.was_removed("never-seen")


def test_a_withdrawn_item_keeps_its_content_and_is_not_offered_until_it_is_back():
    catalog = Catalog()
    catalog.describe(CatalogItem("i1", 0, "home.lamp", available=False))
    assert catalog.get("i1") == ItemContent("home.lamp") and not catalog.offered("i1")
    catalog.remember("i1", LAMP)  # an event's content changes no availability
    assert catalog.get("i1") == LAMP and catalog.withdrawn == {"i1"}
    catalog.describe(CatalogItem("i1", 0, "home.lamp"))  # no field: available
    assert catalog.offered("i1") and catalog.withdrawn == set()


def test_withdrawn_items_leave_with_their_content_and_the_removed_are_bounded():
    catalog = Catalog(max_items=2)
    catalog.describe(CatalogItem("i1", 0, available=False))
    catalog.describe(CatalogItem("i2", 0, available=False))
    catalog.remove("i2")
    catalog.describe(CatalogItem("i3", 0))
    catalog.describe(CatalogItem("i4", 0))  # i1 dropped: the least recently updated
    assert catalog.withdrawn == set() and len(catalog) == 2
    for n in range(5, 8):
        catalog.remove(f"i{n}")
    assert [i for i in ("i2", "i5", "i6", "i7") if catalog.was_removed(i)] == ["i6", "i7"]


def test_the_catalog_state_keeps_availability_and_removals_and_older_states_load():
    catalog = Catalog()
    catalog.describe(CatalogItem("i1", 0, "a", "b", 1.0, available=False))
    catalog.describe(CatalogItem("i2", 0, "a"))
    catalog.remove("i3")
    restored = Catalog()
    restored.load_state_dict(from_loadable(to_loadable({"c": catalog.state_dict()}))["c"])
    assert restored.state_dict() == catalog.state_dict()
    assert not restored.offered("i1") and restored.offered("i2") and restored.was_removed("i3")
    older = Catalog()
    older.load_state_dict([["i1", "a", "b", 1.0], ["i2", "a", None, None]])  # rows alone
    assert older.offered("i1") and older.get("i2") == ItemContent("a")


# ---------------------------------------------------------------- the candidate pool


def _pool() -> CandidatePool:
    """30 items over 3 categories; i0 the most popular, clicked by every user (u0-u9)."""
    pool = CandidatePool(CandidateConfig(popular=5, per_category=3, new_items=3))
    for n in range(30):
        pool.observe_catalog(CatalogItem(f"i{n}", 0, category=f"c{n % 3}"))
    events = [Event(f"e{u}", 0, "purchase", f"u{u}", "i0") for u in range(10)]
    events += [Event(f"f{n}", 0, "click", f"u{n % 10}", f"i{n % 30}") for n in range(60)]
    pool.observe(events)
    return pool


def _offered(pool: CandidatePool) -> set[str]:
    """Every item some user is offered."""
    block = pool.block({f"u{u}": 0 for u in range(10)})
    return {block.item_ids[i] for i in block.pair_item.tolist()}


def test_a_removed_item_is_nobodys_candidate_at_once_and_after_more_events():
    pool = _pool()
    assert "i0" in pool._top and "i0" in _offered(pool)
    pool.remove("i0")
    assert "i0" not in _offered(pool)  # before the popular lists are rebuilt
    pool.observe([Event("g1", 0, "purchase", "u1", "i0", item=LAMP)])  # still bought somewhere
    assert "i0" not in _offered(pool)
    assert "i0" not in pool._top and all(
        "i0" not in best for best in pool._top_by_category.values()
    )
    assert len(pool._top) == 5  # rebuilt with the next events: another item took its place
    pool.observe_catalog(CatalogItem("i0", 0, category="c0"))  # listed again: as a new item
    assert "i0" in pool._newest and "i0" in _offered(pool)


def test_a_withdrawn_item_leaves_the_popular_lists_and_comes_back_with_its_next_record():
    pool = _pool()
    pool.observe_catalog(CatalogItem("i0", 0, category="c0", available=False))
    assert "i0" not in _offered(pool)
    pool.observe([Event("g1", 0, "click", "u1", "i3")])
    assert "i0" not in pool._top and "i0" not in pool._top_by_category["c0"]
    assert "i0" not in _offered(pool) and pool.content("i0") is not None
    pool.observe_catalog(CatalogItem("i0", 0, category="c0", available=True))
    pool.observe([Event("g2", 0, "click", "u2", "i3")])
    assert pool._top[0] == "i0" and "i0" in _offered(pool)
    assert "i0" not in pool._newest  # back in stock, not new


def test_an_item_announced_withdrawn_reaches_users_as_a_new_one_once_available():
    pool = _pool()
    pool.observe_catalog(CatalogItem("launch", 0, category="c0", available=False))
    assert "launch" not in pool._newest and "launch" not in _offered(pool)
    pool.observe_catalog(CatalogItem("launch", 0, category="c0"))
    assert "launch" in pool._newest and "launch" in _offered(pool)


def test_a_removed_new_item_leaves_the_newest():
    pool = _pool()
    pool.observe_catalog(CatalogItem("fresh", 0, category="c0"))
    assert "fresh" in _offered(pool)
    pool.remove("fresh")
    assert "fresh" not in pool._newest and "fresh" not in _offered(pool)


# ---------------------------------------------------------------- the pipeline


def _served(pipe: Pipeline, users: range, ts: int) -> list[set[str]]:
    """What each of ``users`` is served after a click at ``ts``."""
    events = [Event(f"t{ts}-{u}", ts, "click", f"u{u}", "i5", item=LAMP) for u in users]
    offsets = max(pipe.offsets.values(), default=0)
    messages = [
        RawMessage(0, offsets + n, e.user_id.encode(), encode_event(e))
        for n, e in enumerate(events)
    ]
    result = pipe.process_events(messages, now_ms=NOW)
    return [{entry["item_id"] for entry in record["items"]} for record in result.scores]


def _catalog_message(offset: int, item_id: str, item: CatalogItem | None) -> RawMessage:
    return RawMessage(0, offset, item_id.encode(), encode_catalog_item(item) if item else None)


def test_the_pipeline_applies_tombstones_and_availability_from_the_items_topic():
    pipe = Pipeline(mtl(SMALL), ranking=RankingConfig(top_k=10, cold_slots=1))
    items = [CatalogItem(f"i{n}", NOW, "home.lamp", "acme", 10.0 + n) for n in range(12)]
    pipe.process_catalog([_catalog_message(n, i.item_id, i) for n, i in enumerate(items)], "items")
    buys = [Event(f"b{u}", NOW, "purchase", f"u{u}", "i0", item=LAMP) for u in range(8)]
    pipe.process_events([RawMessage(0, n, None, encode_event(e)) for n, e in enumerate(buys)])
    assert all("i0" in served for served in _served(pipe, range(8), NOW + 1))

    result = pipe.process_catalog([_catalog_message(12, "i0", None)], "items")
    assert result.removed == 1 and result.dead_letters == []
    assert not any("i0" in served for served in _served(pipe, range(8), NOW + 2))

    back = CatalogItem("i0", NOW, "home.lamp", "acme", 10.0)
    withdrawn = CatalogItem("i1", NOW, "home.lamp", "acme", 11.0, available=False)
    pipe.process_catalog(
        [_catalog_message(13, "i0", back), _catalog_message(14, "i1", withdrawn)], "items"
    )
    served = _served(pipe, range(8), NOW + 3)
    assert all("i0" in s for s in served) and not any("i1" in s for s in served)

    state = from_loadable(to_loadable(pipe.state_dict()))  # a checkpoint keeps availability
    restored = Pipeline(mtl(SMALL), ranking=RankingConfig(top_k=10, cold_slots=1))
    restored.load_state_dict(state, dict(pipe.offsets))
    assert not any("i1" in s for s in _served(restored, range(8), NOW + 4))


def test_a_tombstone_without_a_key_is_a_dead_letter():
    pipe = Pipeline(mtl(SMALL))
    result = pipe.process_catalog([RawMessage(0, 0, None, None)], "items")
    assert [d.reason for d in result.dead_letters] == ["missing_field"] and result.removed == 0
