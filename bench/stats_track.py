"""Stats tracking throughput: buffered vs unbuffered, into the embedded SQLite store.

Each event tracks 3 keys (global, per customer, per reseller) at the 7 default
granularities, with a realistic value set (count, a result code map, a duration triple,
a price).  Buffered: increments coalesce in memory and are flushed as bulk writes (flush
time included).  Unbuffered: every track is written at once.  Both run here, one after
the other, and the ratio is printed.

Usage: python bench/stats_track.py [--tracks 150000] [--unbuffered 3000]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import datetime, timezone

from trifle_otel.config import Config
from trifle_otel.stats.api import Stats

CUSTOMERS = [f"c{i}" for i in range(50)]
CODES = ["OK", "OK", "OK", "LOW_MARGIN", "NO_OFFERS", "ERROR"]


def events(n: int, start: float):
    rng = random.Random(1)
    for i in range(n):
        customer = rng.choice(CUSTOMERS)
        duration = rng.uniform(5, 500)
        values = {
            "count": 1,
            "codes": {rng.choice(CODES): 1},
            "duration": {"count": 1, "sum": duration, "square": duration * duration},
            "price": rng.uniform(100, 900),
        }
        at = start + i * 0.01  # 100 events per second of event time
        yield at, ("prices", f"prices/customer/{customer}", f"prices/reseller/r{hash(customer) % 5}"), values


def run(stats: Stats, n_tracks: int, start: float) -> tuple[float, int, int]:
    writes = [0, 0]
    driver = stats.driver
    real_inc = driver.inc

    def counting_inc(ops):
        writes[0] += 1
        writes[1] += len(ops)
        return real_inc(ops)

    driver.inc = counting_inc
    prepared = list(events(n_tracks // 3, start))
    t0 = time.perf_counter()
    for at, keys, values in prepared:
        for key in keys:
            stats.track(key, at, values)
    stats.flush()
    elapsed = time.perf_counter() - t0
    return elapsed, writes[0], writes[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=150_000)
    parser.add_argument("--unbuffered", type=int, default=3_000)
    args = parser.parse_args()
    start = datetime(2026, 11, 23, 10, tzinfo=timezone.utc).timestamp()
    with tempfile.TemporaryDirectory() as home:
        buffered = Stats(Config(home=f"{home}/b"), background=False)
        # Flush as the background thread would: whenever a second of work has passed.
        elapsed_b, flushes_b, buckets_b = 0.0, 0, 0
        chunk = 30_000
        done = 0
        while done < args.tracks:
            n = min(chunk, args.tracks - done)
            e, f, b = run(buffered, n, start + done / 3 * 0.01)
            elapsed_b, flushes_b, buckets_b = elapsed_b + e, flushes_b + f, buckets_b + b
            done += n
        buffered.shutdown()
        unbuffered = Stats(Config(home=f"{home}/u"), buffered=False)
        elapsed_u, flushes_u, buckets_u = run(unbuffered, args.unbuffered, start)
        unbuffered.shutdown()
    rate_b = args.tracks / elapsed_b
    rate_u = args.unbuffered / elapsed_u
    print(f"stats tracking: 3 keys x 7 granularities per event, SQLite, {args.tracks} buffered / {args.unbuffered} unbuffered tracks")
    print(f"  buffered    {rate_b:12,.0f} tracks/s   {buckets_b / args.tracks * 10_000:8,.0f} bucket writes per 10,000 tracks "
          f"({flushes_b} bulk writes)")
    print(f"  unbuffered  {rate_u:12,.0f} tracks/s   {buckets_u / args.unbuffered * 10_000:8,.0f} bucket writes per 10,000 tracks")
    print(f"  ratio buffered/unbuffered: {rate_b / rate_u:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
