"""EventQuery: the SQL it runs on index.db selects exactly what its Python check accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from localbroker.errors import ConfigurationError
from localbroker.state.event_index import EventIndex, EventQuery, IndexedEvent

TOPICS = ["a", "a.b", "a.b.c", "a.c", "a.b.c.d", "x.b", "x.b.c", "ab.b", "a.bb"]
PATTERNS = ["a", "a.b", "*", "a.*", "*.b", "a.>", "*.b.>", ">", "a.*.c", "*.*", "a.b.>"]


@pytest.fixture
async def index(tmp_path: Path):
    index = await EventIndex.open(tmp_path / "index.db")
    await index.add(
        [
            IndexedEvent(i, f"0a-{i}", t, f"k{i % 3}", 1000.0 + i, f"c{i % 2}", None)
            for i, t in enumerate(TOPICS)
        ]
    )
    yield index
    await index.close()


@pytest.mark.parametrize("pattern", PATTERNS)
async def test_topic_wildcards_in_sql_match_topic_pattern(index: EventIndex, pattern: str) -> None:
    q = EventQuery(topic=pattern)
    found = [e.topic for e in await index.query(q, before=100, limit=100)]
    expected = [
        t
        for i, t in reversed(list(enumerate(TOPICS)))
        if q.matches(IndexedEvent(i, "", t, None, 0.0, None, None))
    ]
    assert found  # every pattern here matches something
    assert found == expected


async def test_other_filters_and_keyset_pages(index: EventIndex) -> None:
    q = EventQuery(key="k1", correlation_id="c1", since=1001.0, until=1008.0)
    assert [e.offset for e in await index.query(q, before=100, limit=100)] == [7, 1]
    assert [e.offset for e in await index.query(EventQuery(), before=5, limit=2)] == [4, 3]
    assert [
        e.offset for e in await index.query(EventQuery(id_prefix="0a-1"), before=100, limit=9)
    ] == [1]


@pytest.mark.parametrize(("field", "value"), [("topic", "a.>.b"), ("id_prefix", "x*")])
def test_bad_filters_are_refused(field: str, value: str) -> None:
    with pytest.raises(ConfigurationError):
        EventQuery(**{field: value})
