"""Write-ahead log appends per second, each durable (fdatasync) before it returns.

One thread (every append pays its own sync) against 8 threads appending at once (group
commit: a sync covers every record written while the previous one ran), for small records
and for records the size of a 512-span OTLP request (~128 KiB).  The log lives in a
temporary directory on the same disk as the working directory.

Usage: python bench/wal_append.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time

from trifle_otel.wal import WAL


def run(threads: int, size: int, seconds: float) -> tuple[float, float, float]:
    payload = bytes(size)
    with tempfile.TemporaryDirectory(dir=".") as directory, WAL(directory, max_bytes=1 << 40, segment_bytes=64 << 20) as log:
        stop = time.perf_counter() + seconds
        counts = [0] * threads

        def writer(n: int) -> None:
            while time.perf_counter() < stop:
                log.append(payload)
                counts[n] += 1

        workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - t0
        stats = log.stats()
        appends = sum(counts)
        return appends / elapsed, stats["syncs"] / elapsed, appends * size / elapsed / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per case")
    args = parser.parse_args()
    for size in (1024, 128 * 1024):
        for threads in (1, 8):
            rate, syncs, mib = run(threads, size, args.seconds)
            print(
                f"{size // 1024:4} KiB records, {threads} thread(s): {rate:9,.0f} appends/s "
                f"({syncs:,.0f} syncs/s, {rate / max(syncs, 1e-9):.1f} appends per sync, {mib:,.0f} MiB/s)"
            )


if __name__ == "__main__":
    main()
