"""Concurrent vs sequential `FineTuneEvaluator` runs against a loopback OpenAI fake with 100 ms latency per request.

    python bench/eval_concurrency.py [--n 48] [--latency 0.1] [--concurrency 16]

The fake (tests/fake_openai.py) runs in a separate process so its CPU work does not share the client's GIL.
Every example asks both models (base and fine-tuned), so a run makes 2*n requests. The same evaluator
runs with `concurrency=1` (one request at a time) and `concurrency=16`, with the async and the sync openai
client (one warmed-up client per kind; sequential timed once, concurrent the median of 3 runs).
Last line: `speedup=S concurrency=C` (S for the async client).
"""
import argparse, statistics, time

import openai

from _common import ticket_examples, fake_openai, print_speedup
from finetune_nb.evaluate import FineTuneEvaluator  # noqa: E402


def timed(client, data, concurrency):
    ev = FineTuneEvaluator(client, client, "base", "ft", concurrency=concurrency, progress=False)
    t0 = time.perf_counter(); res = ev.evaluate_dataset(data); secs = time.perf_counter() - t0
    assert len(res) == len(data) and all(c.ok and c.fine_tuned.metrics["exact_match"] == 1.0 for c in res), "bad results"
    return secs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48, help="held-out examples (2 requests each)")
    ap.add_argument("--latency", type=float, default=0.1, help="seconds the fake waits per request")
    ap.add_argument("--concurrency", type=int, default=16)
    a = ap.parse_args()
    with fake_openai(a.latency) as (base_url, _):
        data = ticket_examples(a.n, "ok")
        rows = []
        for kind, cls in (("async", openai.AsyncOpenAI), ("sync", openai.OpenAI)):
            client = cls(base_url=base_url, api_key="sk-bench", max_retries=0)
            timed(client, data[:a.concurrency], a.concurrency)                  # warm up imports and the connection pool
            rows.append((kind, 1, timed(client, data, 1)))
            rows.append((kind, a.concurrency, statistics.median(timed(client, data, a.concurrency) for _ in range(3))))
    print(f"FineTuneEvaluator against a loopback fake, {a.latency*1000:.0f} ms per request, {a.n} examples x 2 models = {2*a.n} requests")
    print(f"{'client':<8}{'mode':<12}{'concurrency':>12}{'seconds':>10}{'req/s':>9}{'speedup':>9}")
    for kind, c, s in rows:
        seq = next(x[2] for x in rows if x[0] == kind and x[1] == 1)
        print(f"{kind:<8}{'sequential' if c == 1 else 'concurrent':<12}{c:>12}{s:>10.2f}{2*a.n/s:>9.1f}{seq/s:>8.1f}x")
    print_speedup(rows[0][2] / rows[1][2], min(a.concurrency, 2*a.n), a.concurrency,
                  f" (async client), {rows[2][2]/rows[3][2]:.1f}x (sync client)")


if __name__ == "__main__":
    main()
