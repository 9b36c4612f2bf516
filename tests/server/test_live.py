"""The live feed never blocks the collector, however slow or many the viewers are."""

from __future__ import annotations

import threading

from server.live import LiveFeed


def test_a_viewer_that_never_reads_does_not_block_publish_and_keeps_the_newest() -> None:
    feed = LiveFeed(maxsize=10)
    with feed.subscribe() as stalled, feed.subscribe() as reader:
        done = threading.Event()

        def publish_many() -> None:
            for i in range(1000):
                feed.publish({"i": i})
            done.set()

        worker = threading.Thread(target=publish_many)
        worker.start()
        worker.join(timeout=30)
        assert done.is_set(), "publish blocked on a viewer that does not read"
        assert stalled.dropped == 990 and reader.dropped == 990
        newest = [stalled.get(0)["i"] for _ in range(10)]  # type: ignore[index]
        assert newest == list(range(990, 1000))
        assert stalled.get(0) is None
    assert feed.subscribers == 0 and feed.published == 1000


def test_many_viewers_each_get_every_item_they_have_room_for() -> None:
    feed = LiveFeed(maxsize=100)
    with feed.subscribe() as a, feed.subscribe() as b:
        for i in range(50):
            feed.publish({"i": i})
        for sub in (a, b):
            assert [sub.get(0)["i"] for _ in range(50)] == list(range(50))  # type: ignore[index]
            assert sub.dropped == 0
