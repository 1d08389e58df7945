"""Concurrent vs sequential LLM augmentation against a loopback OpenAI fake with 50 ms latency per request.

    python bench/augment_concurrency.py [--n 96] [--latency 0.05] [--concurrency 16]

The fake (tests/fake_openai.py) runs in a separate process so the server's CPU work does not share the
client's GIL. Both runs use the same `DataAugmenter` and the real openai SDK over HTTP; only `concurrency`
differs (1 = one request at a time). Last line: `speedup=S concurrency=C`.
"""
import argparse, asyncio, os, time

import openai

from _common import ticket_examples, fake_openai, print_speedup
from finetune_nb.augment import DataAugmenter  # noqa: E402
from finetune_nb import data as fdata  # noqa: E402


def proc_cpu(pid):
    "CPU seconds (user+system) used so far by process `pid` (Linux /proc)."
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def timed(base_url, data, concurrency, variations):
    async def go():
        client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-bench")
        try:
            aug = DataAugmenter(client, num_variations=variations, concurrency=concurrency, progress=False)
            t0 = time.perf_counter(); res = await aug.augment_async(data)
            return time.perf_counter() - t0, res
        finally: await client.close()
    return asyncio.run(go())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=96, help="source examples (one request each)")
    ap.add_argument("--latency", type=float, default=0.05, help="seconds the fake waits per request")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--variations", type=int, default=3)
    a = ap.parse_args()
    with fake_openai(a.latency, "--reply", "paraphrase") as (base_url, proc):
        data = ticket_examples(a.n, '{"category": "billing", "priority": "high"}')
        fdata.validate_records(data[:1], min_examples=0)        # load the tokenizer once, outside the timings
        timed(base_url, data[:4], 4, a.variations)              # warm up connections and imports
        rows = []
        for c in (1, a.concurrency):
            cpu0, srv0 = time.process_time(), proc_cpu(proc.pid)
            secs, res = timed(base_url, data, c, a.variations)
            cpu, srv = time.process_time() - cpu0, proc_cpu(proc.pid) - srv0
            assert res.ok and len(res.records) == a.n * a.variations, res
            rows.append((c, res.requests, secs, cpu, srv))
    print(f"DataAugmenter against a loopback fake, {a.latency*1000:.0f} ms latency per request, {a.n} examples x {a.variations} variations")
    print(f"{'mode':<12}{'concurrency':>12}{'requests':>10}{'seconds':>10}{'req/s':>9}{'client cpu ms/req':>19}{'server cpu ms/req':>19}")
    for c, n, s, cpu, srv in rows:
        print(f"{'sequential' if c == 1 else 'concurrent':<12}{c:>12}{n:>10}{s:>10.2f}{n/s:>9.1f}{cpu/n*1000:>19.1f}{srv/n*1000:>19.1f}")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (other processes compete for the same cores)")
    print_speedup(rows[0][2] / rows[1][2], min(a.concurrency, a.n), a.concurrency)


if __name__ == "__main__":
    main()
