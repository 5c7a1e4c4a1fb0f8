"""The write-ahead log: durable appends, group commit, segments, trimming, bounds, crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from trifle_otel import wal as wal_module
from trifle_otel.errors import StoreError, TrifleError, WALFull
from trifle_otel.wal import WAL, Position


def payloads(wal: WAL) -> list[bytes]:
    return [record.payload for record in wal.replay()]


def test_appended_records_replay_in_order_after_reopening(tmp_path):
    with WAL(tmp_path / "wal") as log:
        positions = [log.append(f"request {i}".encode()) for i in range(5)]
        log.append(b"")
        assert [r.position for r in log.replay()][:5] == positions
    with WAL(tmp_path / "wal") as log:
        assert payloads(log) == [f"request {i}".encode() for i in range(5)] + [b""]
        log.append(b"after restart")
        assert payloads(log)[-1] == b"after restart"
        # a restart never appends after what the last run left: a new segment starts
        assert [s.segment for s in log.segments()] == [1, 2]


def test_segments_rotate_by_size_and_one_large_record_gets_its_own(tmp_path):
    with WAL(tmp_path, segment_bytes=1000) as log:
        for i in range(20):
            log.append(bytes([i]) * 100)
        big = log.append(b"x" * 5000)
        log.append(b"small")
        segments = log.segments()
        assert len(segments) == 5  # 9 records of 108 bytes per 1000-byte segment, the big one, the current
        assert all(s.bytes <= 1000 for s in segments if s.segment != big.segment)
        assert [s.current for s in segments] == [False] * (len(segments) - 1) + [True]
        assert payloads(log) == [bytes([i]) * 100 for i in range(20)] + [b"x" * 5000, b"small"]
        assert log.bytes == sum(s.bytes for s in segments) == sum(p.stat().st_size for p in tmp_path.glob("wal-*.log"))


def test_release_deletes_a_segment_and_frees_its_bytes(tmp_path):
    with WAL(tmp_path, segment_bytes=300) as log:
        first = log.append(b"a" * 200)
        log.append(b"b" * 200)
        before = log.bytes
        log.release(first.segment)
        assert not (tmp_path / f"wal-{first.segment:016d}.log").exists()
        assert log.bytes < before
        assert payloads(log) == [b"b" * 200]
        current = log.segments()[-1].segment
        log.release(current)  # the current one: the next append starts a new segment
        assert payloads(log) == [] and log.bytes == 0
        log.append(b"c")
        assert payloads(log) == [b"c"]
        assert log.stats()["released"] == 2


def test_carry_forward_keeps_what_is_still_needed(tmp_path):
    with WAL(tmp_path) as log:
        old = [log.append(f"r{i}".encode()) for i in range(4)]
        segment = old[0].segment
        moved = log.carry_forward(segment, [b"r1", b"r3"])  # r0, r2 are stored; r1, r3 still open
        assert all(p.segment != segment for p in moved)
        assert payloads(log) == [b"r1", b"r3"]
        log.append(b"r4")
    with WAL(tmp_path) as log:
        assert payloads(log) == [b"r1", b"r3", b"r4"]


def test_full_log_refuses_without_writing_until_trimmed(tmp_path):
    with WAL(tmp_path, max_bytes=1000, segment_bytes=400) as log:
        positions = []
        with pytest.raises(WALFull) as caught:
            while True:
                positions.append(log.append(b"x" * 100))
        assert "is full" in str(caught.value) and "receivers.wal_max_bytes" in str(caught.value)
        assert isinstance(caught.value, TrifleError)
        size = log.bytes
        assert size <= 1000
        with pytest.raises(WALFull):
            log.append(b"y")
        assert log.bytes == size and payloads(log) == [b"x" * 100] * len(positions)
        assert log.stats()["refused"] == 2
        # carrying forward may pass the bound: it frees the old segment right after
        log.carry_forward(positions[0].segment, [b"keep"] * 3)
        log.release(positions[-1].segment)
        log.append(b"z" * 100)
        assert payloads(log)[-1] == b"z" * 100


def test_torn_tail_is_ignored_and_counted(tmp_path):
    with WAL(tmp_path) as log:
        for i in range(3):
            log.append(f"record {i}".encode() * 10)
    (segment,) = tmp_path.glob("wal-*.log")
    data = segment.read_bytes()
    segment.write_bytes(data[:-5])  # the last record cut short, as a crash mid-write leaves it
    with WAL(tmp_path) as log:
        assert payloads(log) == [f"record {i}".encode() * 10 for i in range(2)]
        assert log.stats()["torn_records"] == 1
        log.append(b"next")
        assert payloads(log) == [f"record {i}".encode() * 10 for i in range(2)] + [b"next"]


@pytest.mark.parametrize("damage", ["checksum", "zeros", "length", "header"])
def test_corrupt_records_end_their_segment_never_raise(tmp_path, damage):
    with WAL(tmp_path, segment_bytes=200) as log:
        for i in range(6):
            log.append(bytes([65 + i]) * 80)
    first = sorted(tmp_path.glob("wal-*.log"))[0]
    data = bytearray(first.read_bytes())
    if damage == "checksum":
        data[-1] ^= 0xFF
    elif damage == "zeros":
        data += bytes(64)  # a file extended with zeros by a crash
    elif damage == "length":
        data[8:12] = (10**9).to_bytes(4, "little")
    else:
        data[:8] = b"NOTAWAL!"
    first.write_bytes(bytes(data))
    with WAL(tmp_path) as log:
        records = payloads(log)
        assert log.stats()["torn_records"] == 1
        assert records[-1] == b"F" * 80  # later segments are still read
        assert len(records) < 6 or damage == "zeros"


def test_one_process_per_directory(tmp_path):
    with WAL(tmp_path):
        with pytest.raises(StoreError, match="in use by another process"):
            WAL(tmp_path)
    WAL(tmp_path).close()


def test_concurrent_appends_share_syncs(tmp_path, monkeypatch):
    real_sync = wal_module._sync

    def slow_sync(fd):  # a disk where a sync takes 5 ms
        time.sleep(0.005)
        real_sync(fd)

    monkeypatch.setattr(wal_module, "_sync", slow_sync)
    results: dict[int, list[Position]] = {}
    with WAL(tmp_path, segment_bytes=20_000) as log:
        def writer(n: int) -> None:
            results[n] = [log.append(f"{n}:{i}".encode() * 20) for i in range(25)]

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = log.stats()
        assert stats["appends"] == 200
        assert stats["syncs"] <= 100, stats  # one sync per round of waiting writers, not one each
        replayed = {r.position: r.payload for r in log.replay()}
        for n, positions in results.items():
            assert [replayed[p] for p in positions] == [f"{n}:{i}".encode() * 20 for i in range(25)]


_CRASH_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from trifle_otel.wal import WAL

    log = WAL(sys.argv[1], segment_bytes=4096)
    run = sys.argv[2]
    out = threading.Lock()

    def writer(n):
        i = 0
        while True:
            name = f"{run}/{n}/{i}"
            log.append(name.encode() + b"|" + bytes(200 + (i * 37) % 500))
            with out:  # printed only once append returned: acknowledged
                sys.stdout.write(name + "\\n")
                sys.stdout.flush()
            i += 1

    for n in range(4):
        threading.Thread(target=writer, args=(n,), daemon=True).start()
    threading.Event().wait()
    """
)


def test_every_acknowledged_append_survives_kill_9(tmp_path):
    directory = tmp_path / "wal"
    acknowledged: set[str] = set()
    for run in ("first", "second"):  # the second run appends after the first one's torn tail
        proc = subprocess.Popen([sys.executable, "-c", _CRASH_SCRIPT, str(directory), run], stdout=subprocess.PIPE, text=True)
        try:
            for count, line in enumerate(proc.stdout, 1):  # type: ignore[arg-type]
                acknowledged.add(line.strip())
                if count >= 400:
                    break
            os.kill(proc.pid, signal.SIGKILL)
            rest, _ = proc.communicate(timeout=10)
            acknowledged.update(line for line in rest.splitlines() if line.count("/") == 2)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        with WAL(directory) as log:
            replayed = {r.payload.split(b"|", 1)[0].decode() for r in log.replay()}
        missing = acknowledged - replayed
        assert not missing, f"acknowledged but not replayed: {sorted(missing)[:5]}"
    assert len(acknowledged) >= 800
    assert len(list(directory.glob("wal-*.log"))) > 20  # segments rotated while appending


def test_a_failed_sync_stops_the_log(tmp_path, monkeypatch):
    log = WAL(tmp_path)
    log.append(b"before")

    def failing_sync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(wal_module, "_sync", failing_sync)
    with pytest.raises(StoreError, match=r"could not sync to disk \(Input/output error\); it takes no more records"):
        log.append(b"lost")
    monkeypatch.undo()
    with pytest.raises(StoreError, match="takes no more records"):
        log.append(b"after")  # a sync that now "works" could acknowledge pages the kernel dropped
    log.close()
    with WAL(tmp_path) as reopened:
        assert payloads(reopened)[0] == b"before"
