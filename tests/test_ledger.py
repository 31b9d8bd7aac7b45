"""The ledger the core keeps its records in: the contract on the memory ledger, and the
record codec's formats."""

from __future__ import annotations

import pytest

from ovas.ledger import FORMAT_KEY, Entry, LedgerError, MemoryLedger, RecordCodec, UnknownFormat
from ovas.testing import LedgerContract


class TestMemoryLedger(LedgerContract):
    @pytest.fixture
    def ledger(self):
        return MemoryLedger()

    @pytest.fixture
    def ledger_factory(self):
        return None  # one process: the races run between threads

    @pytest.fixture
    def engine_calls(self, ledger):
        return lambda: ledger.calls


def _v1_to_v2(fields):
    """Format 1 kept the clocks as one comma-separated value; format 2 names each."""
    connect, idle, lifetime = fields.pop("clocks").split(",")
    return {**fields, "connect_timeout": connect, "idle_timeout": idle, "max_lifetime": lifetime}


CODEC = RecordCodec("session", current=2, readers={1: _v1_to_v2, 2: dict}, legacy=1)


def test_a_record_carries_its_format_and_kind():
    data = CODEC.encode({"user": "alice"})
    assert data[FORMAT_KEY] == "2" and data["kind"] == "session"
    assert CODEC.decode(Entry("s", data, "1")) == {"user": "alice"}


def test_an_older_format_is_read_in_the_current_shape():
    old = {FORMAT_KEY: "1", "kind": "session", "user": "alice", "clocks": "300,300,28800"}
    assert CODEC.decode(Entry("s", old, "1")) == {
        "user": "alice",
        "connect_timeout": "300",
        "idle_timeout": "300",
        "max_lifetime": "28800",
    }
    # A record from before formats existed is read as the legacy format.
    legacy = {"user": "bob", "clocks": "1,2,3"}
    assert CODEC.decode(Entry("s", legacy, "1"))["max_lifetime"] == "3"


@pytest.mark.parametrize(
    "data",
    [
        {FORMAT_KEY: "3", "kind": "session", "user": "from a newer release"},
        {FORMAT_KEY: "two", "kind": "session"},
        {FORMAT_KEY: "99999999999", "kind": "session"},
        {FORMAT_KEY: "2", "kind": "slot"},
    ],
)
def test_a_newer_unknown_or_foreign_record_is_unknown_and_left_as_it_is(data):
    ledger = MemoryLedger()
    entry = ledger.create("s-1", data)
    with pytest.raises(UnknownFormat) as raised:
        CODEC.decode(entry)
    assert raised.value.name == "s-1"
    assert dict(ledger.get("s-1").data) == data  # reading changed nothing


def test_without_a_legacy_format_a_record_lacking_one_is_unknown():
    codec = RecordCodec("slot", current=1, readers={1: dict})
    with pytest.raises(UnknownFormat):
        codec.decode(Entry("x", {"holder": "s"}, "1"))


def test_the_codec_keeps_its_own_keys():
    with pytest.raises(LedgerError):
        CODEC.encode({FORMAT_KEY: "9"})
