"""`GET /stream`: pages, sorting and the username filter, as a client reads them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ovas.models import Session, SessionQuery
from ovas.testing import make_request

USERS = ["dora", "bob", "alice", "bob", "carol", "alice@example.com", "bob"]
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def started(backend) -> list[str]:
    """Sessions of USERS, started a minute apart in that order; their ids, oldest first."""
    ids = []
    for minute, user in enumerate(USERS):
        request = make_request(backend.catalog, username=user)
        backend.start(replace(request, created_time=T0 + timedelta(minutes=minute)))
        ids.append(request.id)
    return ids


def page(client, query: str = "") -> dict:
    answer = client.get(f"/streaming/stream{query}")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return answer.get_json()


def test_newest_first_by_default(client, started):
    body = page(client)
    assert (body["offset"], body["limit"], body["count"]) == (0, 50, len(USERS))
    assert [item["id"] for item in body["items"]] == started[::-1]


def test_pages_follow_each_other_without_gap_or_overlap(client, started):
    seen = []
    for offset in range(0, len(USERS) + 3, 3):
        body = page(client, f"?limit=3&offset={offset}&order=ASC")
        assert (body["offset"], body["limit"]) == (offset, 3)
        assert body["count"] == len(body["items"]) <= 3
        seen += [item["id"] for item in body["items"]]
    assert seen == started


def test_past_the_end_is_an_empty_page(client, started):
    body = page(client, f"?offset={len(USERS)}")
    assert (body["count"], body["items"]) == (0, [])


def test_sorted_by_username_then_created_time(client, started):
    body = page(client, "?sort-by=username&order=asc")
    expected = sorted(range(len(USERS)), key=lambda i: (USERS[i], i))
    assert [item["id"] for item in body["items"]] == [started[i] for i in expected]
    assert [item["username"] for item in body["items"]] == sorted(USERS)
    body = page(client, "?sort-by=username&order=DESC&limit=2")
    assert [item["id"] for item in body["items"]] == [started[i] for i in expected[::-1][:2]]


def test_filtered_by_username(client, started):
    body = page(client, "?username=bob&order=ASC")
    assert [item["id"] for item in body["items"]] == [started[1], started[3], started[6]]
    body = page(client, "?username=alice%40example.com")
    assert [item["id"] for item in body["items"]] == [started[5]]
    assert page(client, "?username=nobody")["items"] == []


def session(sid: str, user: str, minute: int) -> Session:
    return Session(sid, "app", "1.0.0", "default", user, T0 + timedelta(minutes=minute))


def test_query_select_breaks_ties_by_id():
    same_time = [session("b", "u", 0), session("a", "u", 0), session("c", "u", 1)]
    assert [s.id for s in SessionQuery(descending=False).select(same_time)] == ["a", "b", "c"]
    by_user = SessionQuery(sort_by="username", descending=True).select(same_time)
    assert [s.id for s in by_user] == ["c", "b", "a"]
