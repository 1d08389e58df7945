"""Shared set-up of the concurrency benchmarks: the repository root on `sys.path`, ticket-like examples, and the
loopback OpenAI fake (tests/fake_openai.py) in its own process."""
import contextlib, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))


def ticket_examples(n, answer):
    "`n` distinct support-ticket chat records whose assistant reply is `answer`."
    return [{"messages": [{"role": "system", "content": "Classify the support ticket as JSON."},
                          {"role": "user", "content": f"Ticket {i}: I was charged twice for order #{1000+i}."},
                          {"role": "assistant", "content": answer}]} for i in range(n)]


@contextlib.contextmanager
def fake_openai(latency, *args):
    "Start the fake in a separate process (its CPU work does not share our GIL); yield `(base_url, process)`."
    proc = subprocess.Popen([sys.executable, str(ROOT/"tests"/"fake_openai.py"), "--latency", str(latency), *args],
                            stdout=subprocess.PIPE, text=True)
    try: yield proc.stdout.readline().strip(), proc
    finally:
        proc.terminate(); proc.wait(10)


def print_speedup(speedup, ideal, concurrency, detail=""):
    "The closing lines of a concurrency benchmark; the last one is the contract `speedup=S concurrency=C`."
    print(f"ideal speedup {ideal:.0f}x; measured {speedup:.1f}x{detail}")
    print(f"speedup={speedup:.1f} concurrency={concurrency}")
