"""Load on the deployment server: N concurrent chat requests over loopback, with and without batching, plain and streamed.

Starts `finetune-nb serve` (a real uvicorn process) twice on the tiny model: once with the micro-batching
queue (`--max-batch 32`) and once generating one request at a time (`--max-batch 1`), and drives each with
the official `openai` async client at the same concurrency. batching_gain = requests/s batched ÷ one-at-a-time.
The batched server is also driven with `stream=True` requests (same count and concurrency): stream_vs_plain =
streamed requests/s ÷ plain requests/s (streams share the batcher, so this should be near 1).

    python bench/serve_load.py [--requests 200] [--concurrency 32] [--max-tokens 16] [--baseline-requests 64]
"""
import argparse, asyncio, json, os, sys, time, signal, socket, subprocess, tempfile, statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def base_model()->str:
    try:
        from finetune_nb.tiny import TINY_MODEL, resolve_model_path
        resolve_model_path(TINY_MODEL); return TINY_MODEL
    except ImportError:   # until the tiny module lands: the eval area's tiny random Llama
        sys.path.insert(0, str(ROOT/"tests"))
        from fixtures_eval import build_tiny_random
        from finetune_nb.core import get_config
        return build_tiny_random(get_config().cache_dir/"eval-fixtures"/"tiny-random-llama")


def free_port()->int:
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def start(model:str, state:Path, max_batch:int):
    import httpx
    port = free_port()
    env = {**os.environ, "FINETUNE_NB_BASE_MODELS": model}; env.pop("FINETUNE_NB_API_KEYS", None)
    p = subprocess.Popen([str(Path(sys.executable).parent/"finetune-nb"), "serve", "--port", str(port), "--state-dir", str(state),
                          "--max-batch", str(max_batch), "--log-level", "warning"], env=env, cwd=ROOT)
    for _ in range(900):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200: return p, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError: time.sleep(0.1)
    p.kill(); raise SystemExit("server did not start")


async def load(base_url:str, model:str, prompts:list, n:int, concurrency:int, max_tokens:int, stream:bool=False, server_metrics:bool=True)->dict:
    "Warm up with one request, then `n` requests at `concurrency`: requests/s, p50/p99 latency, generated tokens/s (and our server's mean batch size with `server_metrics`)."
    import openai
    client = openai.AsyncOpenAI(base_url=base_url, api_key="no-key", max_retries=0, timeout=600)
    await client.chat.completions.create(model=model, messages=prompts[0], max_tokens=max_tokens, temperature=0)   # load the model
    sem, lat, errors, tokens = asyncio.Semaphore(concurrency), [], 0, 0
    async def one(i):
        nonlocal errors, tokens
        async with sem:
            t0 = time.perf_counter()
            try:
                kw = dict(model=model, messages=prompts[i % len(prompts)], max_tokens=max_tokens, temperature=0)
                if stream:
                    usage = None
                    async for ch in await client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}): usage = ch.usage or usage
                    tokens += usage.completion_tokens
                else:
                    r = await client.chat.completions.create(**kw)   # (awaited first: `tokens += await ...` would read `tokens` before the await)
                    tokens += r.usage.completion_tokens
                lat.append(time.perf_counter() - t0)
            except Exception as e:
                errors += 1; print("error:", type(e).__name__, str(e)[:200], file=sys.stderr)
    import httpx
    metrics = lambda: {l.split()[0]: float(l.split()[1]) for l in httpx.get(base_url[:-3] + "/metrics").text.splitlines()
                       if l.split()[0] in ("finetune_nb_batches", "finetune_nb_batched_requests")} if server_metrics else {}
    m0 = metrics()
    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - t0
    m1 = metrics()
    await client.close()
    nb = m1["finetune_nb_batches"] - m0["finetune_nb_batches"] if server_metrics else 0
    avg_batch = (m1["finetune_nb_batched_requests"] - m0["finetune_nb_batched_requests"]) / nb if nb else float("nan")
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")
    return {"n": n, "errors": errors, "wall_s": wall, "avg_batch": avg_batch, "rps": (n - errors) / wall, "p50_ms": q(0.5), "p99_ms": q(0.99), "tok_s": tokens / wall}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200); ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=16); ap.add_argument("--baseline-requests", type=int, default=64)
    a = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from finetune_nb.demo import make_demo_data
    model = base_model()
    _, test = make_demo_data(n_train=1, n_test=64, seed=1)
    prompts = [[m for m in r["messages"] if m["role"] != "assistant"] for r in test]
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        for name, mb, n in [("batched (max_batch=32)", 32, a.requests), ("one at a time (max_batch=1)", 1, a.baseline_requests)]:
            p, url = start(model, Path(d)/name.split()[0], mb)
            try:
                rows[name] = asyncio.run(load(url, model, prompts, n, a.concurrency, a.max_tokens))
                if mb > 1: rows["batched, streamed"] = asyncio.run(load(url, model, prompts, n, a.concurrency, a.max_tokens, stream=True))
            finally: p.send_signal(signal.SIGTERM); p.wait(30)
    b, s, st = rows["batched (max_batch=32)"], rows["one at a time (max_batch=1)"], rows["batched, streamed"]
    gain = b["rps"] / s["rps"] if s["rps"] else float("nan")
    svp = st["rps"] / b["rps"] if b["rps"] else float("nan")
    print(f"\nServer load: model={model!r}, concurrency={a.concurrency}, max_tokens={a.max_tokens}, loopback, openai SDK")
    print(f"{'mode':<30}{'requests':>9}{'errors':>7}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'gen tok/s':>10}{'avg batch':>10}")
    for k, r in rows.items(): print(f"{k:<30}{r['n']:>9}{r['errors']:>7}{r['rps']:>8.2f}{r['p50_ms']:>9.0f}{r['p99_ms']:>9.0f}{r['tok_s']:>10.1f}{r['avg_batch']:>10.1f}")
    print(f"batching gain (req/s batched / one at a time): {gain:.2f}x; streamed / plain: {svp:.2f}\n")
    print(f"rps={b['rps']:.2f} p50_ms={b['p50_ms']:.0f} p99_ms={b['p99_ms']:.0f} errors={b['errors'] + s['errors'] + st['errors']} batching_gain={gain:.2f} "
          f"stream_rps={st['rps']:.2f} stream_vs_plain={svp:.2f}")


if __name__ == "__main__": main()
