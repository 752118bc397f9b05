"""The done table's dedupe window: which ids are evicted, and how the store is swept."""

import asyncio
import types

import pytest
import rocksdict
from hypothesis import given
from hypothesis import strategies as st

from streams.tables import ChangelogTable, DoneSweeper, lock_data_dir
from turnout.core import retention
from turnout.core.retention import done_value, expired, oldest_first_expired, select_expired

WINDOW_MS = 60_000
TOPIC = "app-done-changelog"


def entry(at_ms, partition=0):
    return done_value(at_ms=at_ms, backend="b", replay=False, partition=partition)


def test_the_module_examples_hold():
    """The docstring's examples are the specification: they must stay true."""
    import doctest

    assert doctest.testmod(retention).failed == 0


def test_an_id_is_kept_for_the_whole_window():
    """An id answered exactly one window ago is still remembered; a millisecond later it is not."""
    assert not expired(entry(0), now_ms=WINDOW_MS, window_ms=WINDOW_MS)
    assert expired(entry(0), now_ms=WINDOW_MS + 1, window_ms=WINDOW_MS)


def test_an_entry_without_a_time_is_evicted():
    """An entry that cannot say when it was answered dedupes nothing, so it does not stay."""
    assert expired(b'{"backend": "b"}', now_ms=0, window_ms=WINDOW_MS)
    assert expired(b'{"at_ms": true}', now_ms=0, window_ms=WINDOW_MS)
    assert expired(b"[1]", now_ms=0, window_ms=WINDOW_MS)


@given(
    st.lists(st.integers(0, 200_000), max_size=50),
    st.integers(0, 300_000),
    st.integers(1, 100_000),
)
def test_exactly_the_entries_past_the_window_are_selected(ats, now_ms, window_ms):
    """select_expired picks every entry older than the window and no other."""
    items = [(b"k%d" % i, entry(at)) for i, at in enumerate(ats)]
    got = select_expired(items, now_ms=now_ms, window_ms=window_ms)
    assert got == [b"k%d" % i for i, at in enumerate(ats) if now_ms - at > window_ms]


@given(st.lists(st.integers(0, 200_000), max_size=50), st.integers(0, 10))
def test_a_front_scan_takes_only_an_expired_prefix(ats, limit):
    """From an insertion-ordered store: the expired entries in front, at most limit of them."""
    items = [(b"k%d" % i, entry(at)) for i, at in enumerate(ats)]
    got = oldest_first_expired(items, now_ms=150_000, window_ms=WINDOW_MS, limit=limit)
    assert len(got) <= limit
    assert got == [k for k, _ in items[: len(got)]]
    assert all(expired(v, now_ms=150_000, window_ms=WINDOW_MS) for _, v in items[: len(got)])


# -- the store side, on real RocksDB files --------------------------------------------------


class Sent:
    def __init__(self, partition, offset):
        self.topic_partition = types.SimpleNamespace(partition=partition)
        self.offset = offset


class Producer:
    """Records what would go to the changelog; every send is acknowledged at once."""

    def __init__(self):
        self.sent = []

    async def send(self, topic, key, value, partition, timestamp, headers):
        self.sent.append((topic, partition, key, value))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(Sent(partition, len(self.sent) - 1))
        return fut


class RocksStore:
    """faust's RocksDB store as ChangelogTable uses it: a database per partition."""

    offset_key = b"__faust\x00offset__"

    def __init__(self, path, assigned=(0, 1, 2)):
        self.path = path
        self._dbs = {}
        for partition in assigned:  # faust opens them when the partitions are assigned
            self._db_for_partition(partition)

    def _db_for_partition(self, partition):
        if partition not in self._dbs:
            path = str(self.path / f"done-{partition}.db")
            self._dbs[partition] = rocksdict.Rdict(path, rocksdict.Options(raw_mode=True))
        return self._dbs[partition]

    def set_persisted_offset(self, tp, offset):
        self._db_for_partition(tp.partition).put(self.offset_key, str(offset).encode())


class MemoryStore:
    def __init__(self):
        self.data = {}

    def __setitem__(self, key, value):
        self.data[key] = value

    def set_persisted_offset(self, tp, offset):
        pass


def changelog_table(store):
    producer = Producer()
    table = types.SimpleNamespace(
        data=store, changelog_topic=types.SimpleNamespace(get_topic_name=lambda: TOPIC)
    )
    return ChangelogTable(table, types.SimpleNamespace(producer=producer)), producer


async def fill(table, partition, ages, now_ms):
    for i, age in enumerate(ages):
        await table.put(partition, b"p%d-k%03d" % (partition, i), entry(now_ms - age, partition))


async def test_rocksdb_sweeps_evict_and_tombstone_only_expired_ids_of_owned_partitions(tmp_path):
    """Passes of 7 entries cover the whole partition; young ids and other partitions stay."""
    store = RocksStore(tmp_path)
    table, producer = changelog_table(store)
    now = 10_000_000
    ages = [WINDOW_MS * 2 if i % 3 == 0 else 1000 for i in range(30)]
    await fill(table, 0, ages, now)
    await fill(table, 1, ages, now)  # a standby's partition here: its owner evicts it
    producer.sent.clear()
    sweeper = DoneSweeper(table, lambda: [0], window_s=WINDOW_MS / 1000, budget=7,
                          clock=lambda: now / 1000)
    for _ in range(5):  # 30 entries and the offset key, 7 a pass: one full round and more
        await sweeper.sweep()
    old = {b"p0-k%03d" % i for i in range(30) if i % 3 == 0}
    assert sweeper.evicted == 10
    assert {(t, p, v) for t, p, _, v in producer.sent} == {(TOPIC, 0, None)}
    assert {k for *_, k, _ in producer.sent} == old
    left0 = {k for k in store._dbs[0].keys() if k != RocksStore.offset_key}
    assert left0 == {b"p0-k%03d" % i for i in range(30)} - old
    assert len([k for k in store._dbs[1].keys() if k != RocksStore.offset_key]) == 30


async def test_rocksdb_persists_the_changelog_offset_of_each_write(tmp_path):
    """Once the broker has a write, its offset is stored, so a restart reads on from there."""
    store = RocksStore(tmp_path)
    table, _ = changelog_table(store)
    await fill(table, 2, [0, 0, 0], 1_000_000)
    await asyncio.sleep(0)  # the send futures' callbacks run on the next loop turn
    assert store._dbs[2][RocksStore.offset_key] == b"2"


async def test_an_id_is_evicted_once_the_clock_passes_its_window(tmp_path):
    """With the clock passed in: kept one window, gone on the first sweep after it."""
    store = RocksStore(tmp_path)
    table, producer = changelog_table(store)
    await table.put(0, b"k", entry(1_000_000))
    clock = [1_000_000 / 1000]
    sweeper = DoneSweeper(table, lambda: [0], window_s=60, budget=100, clock=lambda: clock[0])
    clock[0] += 60
    assert await sweeper.sweep() == 0 and store._dbs[0].get(b"k") is not None
    clock[0] += 0.001
    assert await sweeper.sweep() == 1 and store._dbs[0].get(b"k") is None
    assert producer.sent[-1] == (TOPIC, 0, b"k", None)


async def test_the_memory_store_is_swept_from_its_oldest_entries():
    """In insertion order: expired ids in front go; the owner's are tombstoned, a standby's not."""
    store = MemoryStore()
    table, producer = changelog_table(store)
    now = 10_000_000
    await table.put(0, b"a", entry(now - 2 * WINDOW_MS, 0))
    await table.put(1, b"b", entry(now - 2 * WINDOW_MS, 1))
    await table.put(0, b"c", entry(now - 1000, 0))
    await table.put(0, b"d", entry(now - 2 * WINDOW_MS, 0))  # rewritten late: waits behind c
    producer.sent.clear()
    sweeper = DoneSweeper(table, lambda: [0], window_s=WINDOW_MS / 1000, budget=100,
                          clock=lambda: now / 1000)
    assert await sweeper.sweep() == 2
    assert list(store.data) == [b"c", b"d"]
    assert producer.sent == [(TOPIC, 0, b"a", None)]


def test_a_data_dir_cannot_be_shared_by_two_workers(tmp_path):
    """The second worker to lock a data directory is refused, with the holder's pid."""
    import os

    fd = lock_data_dir(str(tmp_path / "w"))
    try:
        with pytest.raises(RuntimeError, match=f"in use by another worker \\(pid {os.getpid()}\\)"):
            lock_data_dir(str(tmp_path / "w"))
    finally:
        os.close(fd)
    os.close(lock_data_dir(str(tmp_path / "w")))  # free again once the holder is gone


async def test_a_write_for_a_revoked_partition_goes_only_to_the_changelog(tmp_path):
    """A request finishing after its partition moved away reopens no database here."""
    store = RocksStore(tmp_path, assigned=[0])
    table, producer = changelog_table(store)
    await table.put(5, b"k", entry(1_000_000, 5))
    assert 5 not in store._dbs
    assert producer.sent == [(TOPIC, 5, b"k", entry(1_000_000, 5))]
