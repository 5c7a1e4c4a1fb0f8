"""The worker's stages one by one: CPU microseconds per span of each, without the stores.

The same executions as ``pipeline_throughput.py`` (1 root + 5 child spans, 4 attributes
each, the demo rules) are made once; then each stage runs alone over all of them, several
times, and the best time is printed (the least disturbed by other work on the machine):
conversion of the SDK's spans to the neutral model, assembly into executions, translation
to documents, the rules with the stats buffer (and the rules alone), the encoding of
documents' parts, and the store writes: the documents into an embedded store (SQLite
index and data) in batches of 1,000, as the worker writes them at 1,000 jobs a second
(a batch every ``flush_interval``, 1 s), the store holding ten times as many executions already (a new store each run, so the best of fewer
runs).  The collector is paused while a stage runs, so each
figure is that stage's own work.  Comparing two versions of the code: run this script for each, one after
the other, and compare stage by stage.

Usage: python bench/worker_stages.py [--executions 2000] [--repeat 25]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_throughput import CHILDREN, _rules_file, made_spans  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=25)
    parser.add_argument("--store-repeat", type=int, default=7, help="runs of the store writes (each into a new store)")
    args = parser.parse_args()

    from trifle_otel.assembly import Assembler
    from trifle_otel.config import load_config
    from trifle_otel.ingest.sdk import from_readable_span
    from trifle_otel.sinks import TraceSink, encode_parts
    from trifle_otel.stores import open_data, open_index
    from trifle_otel.stats.sink import ExecutionStats
    from trifle_otel.translate import Translator

    spans = made_spans(args.executions)
    count = len(spans)
    with tempfile.TemporaryDirectory() as home:
        config = load_config(overrides={"home": home, "stats_rules": _rules_file(), "live": False})
        translator = Translator(config)
        stats = ExecutionStats(config)
        now_ns = time.time_ns()

        def best(stage: Callable[..., object], setup: Callable[[], object] | None = None, repeat: int = 0) -> float:
            times = []
            for _ in range(repeat or args.repeat):
                given = (setup(),) if setup is not None else ()
                t0 = time.perf_counter()
                stage(*given)
                times.append(time.perf_counter() - t0)
            return min(times) / count * 1e6

        def assemble():
            assembler = Assembler(grace=0)
            for span in converted:
                assembler.add(span)
            return assembler.collect(ignore_grace=True)

        def observe():
            stats.buffer._raw.clear()
            stats.buffer._calls.clear()
            for execution, doc in zip(executions, documents):
                stats.observe(execution, doc)

        def rules_alone():
            rules = stats.rules
            for execution in executions:
                ctx = {"state": "success", "key": "k"}
                tracks: list = []
                rules.collect(execution.root, ctx, tracks)
                for span in execution.spans:
                    rules.collect(span, ctx, tracks)

        converted = [from_readable_span(s) for s in spans]
        executions = assemble()
        assert len(executions) == args.executions, len(executions)
        gc.collect()
        gc.disable()
        try:
            figures = {
                "conversion": best(lambda: [from_readable_span(s) for s in spans]),
                "assembly": best(assemble),
                "translation": best(lambda: [translator.translate(e, now_ns) for e in executions]),
            }
            documents = [translator.translate(e, now_ns) for e in executions]
            figures["rules and stats buffer"] = best(observe)
            figures["  of which the rules"] = best(rules_alone)
            # encode_parts lets go of a document's lines: each round encodes new documents.
            figures["encoding of parts"] = best(
                lambda docs: [encode_parts(d) for d in docs],
                setup=lambda: [translator.translate(e, now_ns) for e in executions],
            )
            stores: list = []

            earlier = [encode_parts(translator.translate(e, now_ns)) for e in executions]

            def new_store():
                store_config = load_config(overrides={"home": str(Path(home) / f"store{len(stores)}")})
                sink = TraceSink(open_index(store_config.resolved_index_url()),
                                 open_data(store_config.resolved_data_url(), store_config))
                stores.append(sink)
                for copy in range(10):  # what the store holds already
                    for doc in earlier:
                        doc.record["reference"] = f"{copy}{doc.record['span_id']}{doc.record['trace_id']}"
                    for start in range(0, len(earlier), 2_000):
                        sink.write(earlier[start : start + 2_000])
                return sink, [encode_parts(translator.translate(e, now_ns)) for e in executions]

            def write(given):
                sink, docs = given
                for start in range(0, len(docs), 1_000):
                    sink.write(docs[start : start + 1_000])

            figures["store writes"] = best(write, setup=new_store, repeat=args.store_repeat)
            for sink in stores:
                sink.index.close()
                sink.data.close()
        finally:
            gc.enable()
    print(f"python {sys.version.split()[0]}, {args.executions:,} executions of 1 root + {CHILDREN} children "
          f"({count:,} spans), demo rules; best of {args.repeat} runs, the collector paused")
    total = 0.0
    for name, value in figures.items():
        print(f"  {name:<26} {value:6.2f} us per span")
        if not name.startswith(" "):
            total += value
    print(f"  {'total':<26} {total:6.2f} us per span ({1e6 / (total * (1 + CHILDREN)):,.0f} executions/s on one core)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
