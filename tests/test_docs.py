"""README generation and the docs site: README in sync and deterministic; the site builds from the notebooks and,
opened in headless Chromium over the DevTools protocol, loads with no console errors, its navigation reaches
every chapter, and a plot renders."""
import base64, functools, http.server, json, os, shutil, subprocess, sys, tempfile, threading, time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT/"tools"))
import make_readme, build_docs  # noqa: E402


# ---- README ---------------------------------------------------------------------------------------------

def test_readme_in_sync_and_deterministic(tmp_path):
    assert make_readme.main(["--check"]) == 0, "README.md is out of sync with nbs/index.ipynb: run `make readme`"
    a = make_readme.render(); b = make_readme.render()
    assert a == b == (ROOT/"README.md").read_text(encoding="utf-8")


def test_readme_starts_with_the_two_commands():
    lines = [l for l in (ROOT/"README.md").read_text().splitlines() if l.strip()]
    assert lines[1] == "# finetune_nb" and lines[2].startswith("> ")
    cmds = [l.split("#")[0].strip() for l in lines[3:12] if l.startswith("make ")]
    assert cmds == ["make demo", "make test"]


def _nb(*cells):
    nb = nbformat.v4.new_notebook()
    for kind, src, outs in cells:
        c = nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
        if kind == "code": c.outputs = [nbformat.v4.new_output("stream", name="stdout", text=o) for o in outs]
        nb.cells.append(c)
    return nb


def test_readme_directives(tmp_path):
    nb = _nb(("code", "#| default_exp core", []), ("md", "# T\n> s", []),
             ("code", "#| hide\nsecret = 1", ["hidden-out"]),
             ("code", "#| echo: false\nx = 2\nprint(x)", ["only-output"]),
             ("code", "#| output: false\nprint('src')", ["dropped-out"]),
             ("code", "#| export\ndef f(): pass", []),
             ("code", "1+1", ["2"]))
    p, out = tmp_path/"index.ipynb", tmp_path/"README.md"
    nbformat.write(nb, str(p))
    assert make_readme.main(["--nb", str(p), "--out", str(out), "--check"]) == 1   # missing README = out of sync
    assert make_readme.main(["--nb", str(p), "--out", str(out)]) == 0
    md = out.read_text()
    assert "secret" not in md and "hidden-out" not in md and "#|" not in md and "default_exp" not in md
    assert "only-output" in md and "x = 2" not in md
    assert "print('src')" in md and "dropped-out" not in md
    assert "def f(): pass" in md and "    2" in md
    assert make_readme.main(["--nb", str(p), "--out", str(out), "--check"]) == 0
    out.write_text(md + "edited by hand\n")
    assert make_readme.main(["--nb", str(p), "--out", str(out), "--check"]) == 1


# ---- the site in a browser ----------------------------------------------------------------------------

def find_browser():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if (p := shutil.which(name)): return p
    return None


class CDP:
    "A minimal Chrome DevTools Protocol client over one page's websocket (websocket-client)."
    def __init__(self, ws_url):
        import websocket
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.n, self.events = 0, []

    def send(self, method, **params):
        self.n += 1; my = self.n
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            m = json.loads(self.ws.recv())
            if m.get("id") == my:
                if "error" in m: raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_for(self, method, timeout=30):
        for i, e in enumerate(self.events):
            if e.get("method") == method: return self.events.pop(i)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = json.loads(self.ws.recv())
            if m.get("method") == method: return m
            self.events.append(m)
        raise TimeoutError(method)

    def eval(self, js):
        r = self.send("Runtime.evaluate", expression=js, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r: raise RuntimeError(f"JS error in {js!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def goto(self, url):
        "Navigate and wait for the load event; returns the console errors, exceptions and failed requests seen."
        self.events.clear()
        self.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        self.eval("new Promise(r => setTimeout(r, 20))")    # let scripts queued at load report
        errs = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errs.append(f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p.get('args', [])]}")
            elif m == "Runtime.exceptionThrown": errs.append(f"exception: {p['exceptionDetails'].get('text')} {p['exceptionDetails'].get('exception', {}).get('description', '')}")
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error": errs.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif m == "Network.loadingFailed" and not p.get("canceled"): errs.append(f"request failed: {p.get('errorText')}")
            elif m == "Network.responseReceived" and p["response"]["status"] >= 400: errs.append(f"HTTP {p['response']['status']}: {p['response']['url']}")
        return errs


@pytest.fixture(scope="module")
def site():
    "Build the site, serve it on a loopback port, open headless Chromium on it."
    browser = find_browser()
    assert browser, "no Chromium found: run `make browser` (apt-get install -y chromium)"
    nav = build_docs.build()
    handler = functools.partial(type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}),
                                directory=str(build_docs.SITE))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    profile = tempfile.mkdtemp(prefix="fnb-chromium-")
    launch = lambda: subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                       "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage",
                                       "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = launch()
    try:
        # Chromium writes its DevTools port once it is up: up to 2 minutes on a busy 2-core box (a CI run once saw none in 30 s);
        # a browser that exited without writing it is started once more
        port_file, end, relaunched = Path(profile)/"DevToolsActivePort", time.monotonic() + 120, False
        while not (port_file.exists() and port_file.read_text().strip()) and time.monotonic() < end:
            if proc.poll() is not None and not relaunched: proc, relaunched = launch(), True
            time.sleep(0.05)
        assert port_file.exists(), f"headless Chromium wrote no DevTools port in 120 s (exit code {proc.poll()})"
        port = int(port_file.read_text().split()[0])
        import urllib.request
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t["type"] == "page")
        cdp = CDP(page["webSocketDebuggerUrl"])
        for d in ("Page", "Runtime", "Log", "Network"): cdp.send(f"{d}.enable")
        yield {"cdp": cdp, "base": f"http://127.0.0.1:{srv.server_address[1]}/", "nav": nav}
        cdp.ws.close()
    finally:
        proc.terminate()
        try: proc.wait(10)
        except subprocess.TimeoutExpired: proc.kill()
        srv.shutdown(); shutil.rmtree(profile, ignore_errors=True)


def _url(base, src):
    "Page URL of a docs source file (use_directory_urls is off: `page.html`, so the site also works opened as files)."
    return f"{base}{src.rsplit('.', 1)[0]}.html"


def test_site_home_has_nav_to_every_chapter_and_a_plot(site):
    cdp, base, nav = site["cdp"], site["base"], site["nav"]
    assert cdp.goto(base) == []
    chapters = [f for _, f in nav["tutorials"] + nav["howto"] + nav["chapters"] + nav["pipelines"] + nav["api"]]
    found_nbs = sorted(p.name for p in build_docs.NBS.glob("[0-9]*.ipynb"))
    assert sorted(f for _, f in nav["chapters"]) == found_nbs and len(found_nbs) >= 2   # discovered, not listed
    links = set(cdp.eval("[...document.querySelectorAll('nav a[href]')].map(a => a.href)"))
    missing = [f for f in chapters if _url(base, f) not in links]
    assert not missing, f"chapters not reachable from the navigation: {missing}"
    assert cdp.eval("document.querySelector('h1').textContent.trim()").startswith("finetune_nb")
    imgs = cdp.eval("""[...document.images].filter(i => i.src.startsWith('data:image/png'))
                       .map(i => [i.complete, i.naturalWidth, i.naturalHeight])""")
    assert imgs and all(c and w > 100 and h > 50 for c, w, h in imgs), imgs


PLOT_PAGES = {"pipelines/finetune_local.ipynb", "pipelines/finetune_dpo.ipynb", "08_widgets.ipynb"}   # outputs with a loaded inline PNG plot

def test_every_chapter_loads_without_console_errors(site):
    "Every page loads cleanly; the pipeline pages (their example runs) and the widgets chapter (static snapshots) show outputs."
    cdp, base, nav = site["cdp"], site["base"], site["nav"]
    problems, with_outputs = {}, PLOT_PAGES | {f for _, f in nav["pipelines"]}
    assert {f for _, f in nav["chapters"] + nav["pipelines"]} >= PLOT_PAGES
    for title, f in nav["tutorials"] + nav["howto"] + nav["chapters"] + nav["pipelines"] + nav["api"]:
        errs = cdp.goto(_url(base, f))
        h1 = cdp.eval("(document.querySelector('article h1') || {}).textContent || ''")
        if errs or not h1.strip(): problems[f] = errs or ["no h1"]
        if f in with_outputs:
            outs = cdp.eval("[...document.querySelectorAll('article .jp-OutputArea-output')].map(o => o.innerText.trim().length + o.querySelectorAll('img').length)")
            if not any(outs): problems[f] = ["no outputs"]
            if f.startswith("pipelines/"):
                note = cdp.eval("document.querySelector('article').innerText")
                pipeline = {"finetune_local": "local", "finetune_openai": "openai", "finetune_dpo": "dpo"}.get(Path(f).stem, Path(f).stem)
                if "An example run" not in note or f"finetune-nb run {pipeline} -p " not in note: problems[f] = ["no note naming the command that ran it"]
        if f in PLOT_PAGES:
            plots = _plots(cdp)
            if not (plots and all(c and w > 100 and h > 50 for c, w, h in plots)): problems[f] = [f"plots: {plots}"]
    assert not problems, problems


def test_pipeline_examples_match_their_pipelines():
    "Each pipeline page's example run (nbs/pipelines/examples/) is the current pipeline executed: the same cells, with outputs."
    found = build_docs.discover()["pipelines"]
    assert {p.name for p in found} == {"finetune_local.ipynb", "finetune_openai.ipynb", "finetune_dpo.ipynb", "migrate.ipynb"}
    for p in found:
        ex = build_docs.example_run(p)
        assert ex is not None, f"{p.name} has no example run: run `OMP_NUM_THREADS=1 python tools/run_pipeline_examples.py`"
        src, run = nbformat.read(str(p), as_version=4), nbformat.read(str(ex), as_version=4)
        ran = [c for c in run.cells if "injected-parameters" not in c.metadata.get("tags", []) and not c.source.startswith("**An example run.**")]
        stale = [i for i, (a, b) in enumerate(zip(src.cells, ran)) if (a.cell_type, a.source) != (b.cell_type, b.source)]
        assert len(src.cells) == len(ran) and not stale, \
            f"{ex.relative_to(ROOT)} is out of date with {p.name} (cells {stale}): rerun `OMP_NUM_THREADS=1 python tools/run_pipeline_examples.py`"
        code = [c for c in run.cells if c.cell_type == "code"]
        assert sum(len(c.outputs) for c in code) >= 3, f"{ex}: hardly any outputs"   # (nbdev_clean drops execution counts)
        assert "/tmp/" not in ex.read_text() and str(ROOT) not in ex.read_text(), f"{ex}: run-specific paths left in"


def test_api_reference_shows_docments(site):
    cdp, base = site["cdp"], site["base"]
    assert cdp.goto(f"{base}api/cli.html") == []
    text = cdp.eval("document.querySelector('article').innerText")
    assert "def validate(" in text and "print the report as JSON" in text   # the docment of --json
    assert "Check a fine-tuning data file and report every problem" in text   # the docstring


def test_getting_started_page(site):
    "Right after Home in the navigation: the three installs, the demo, where outputs go; its links resolve."
    cdp, base, nav = site["cdp"], site["base"], site["nav"]
    assert nav["start"] == "getting_started.md"
    assert cdp.goto(base) == []
    links = cdp.eval("[...document.querySelectorAll('nav a[href]')].map(a => a.href)")
    assert _url(base, nav["start"]) in links
    assert cdp.goto(_url(base, nav["start"])) == []
    text = cdp.eval("document.querySelector('article').innerText")
    for s in ("pip install", "Colab", "make install", "finetune-nb demo", "<data dir>/runs/<name>/", "progress.log", "status.json"):
        assert s in text, s


def _plots(cdp):
    "The page's inline PNG plots that loaded: [(complete, width, height)]."
    return cdp.eval("""[...document.querySelectorAll('article img')].filter(i => i.src.startsWith('data:image/png'))
                       .map(i => [i.complete, i.naturalWidth, i.naturalHeight])""")


def test_the_tutorial_path_served_and_opened_as_files(site):
    "Getting started → each tutorial (in order, each with a plot) → API, over HTTP and from file:// alike; the tutorials' own links resolve."
    cdp, nav = site["cdp"], site["nav"]
    titles = [t for t, _ in nav["tutorials"]]
    assert len(titles) == 5 and [t.split(":")[0] for t in titles] == [f"Tutorial {i}" for i in range(1, 6)], titles
    assert [f for _, f in nav["howto"]][:4] == [f"howto/{n}.md" for n in ("formats", "qlora_gpu", "serving", "migration")]
    for base in (site["base"], build_docs.SITE.as_uri() + "/"):
        path = [nav["start"], *[f for _, f in nav["tutorials"]], *[f for _, f in nav["howto"]], "api/cli.md"]
        for i, f in enumerate(path):
            url = _url(base, f)
            errs = [e for e in cdp.goto(url) if not (base.startswith("file:") and "search" in e.lower())]  # the search index is fetched, which file:// forbids
            assert errs == [] and cdp.eval("location.href") == url, (url, errs)
            if f == nav["start"]:   # the page leads to every tutorial
                links = cdp.eval("[...document.querySelectorAll('article a[href]')].map(a => a.href)")
                assert all(_url(base, t) in links for _, t in nav["tutorials"]), (url, links)
            if f.startswith("tutorials/"):
                plots = _plots(cdp)
                assert plots and all(c and w > 100 and h > 50 for c, w, h in plots), (url, plots)
            if i + 1 < len(path) and f.startswith("tutorials/") and path[i+1].startswith("tutorials/"):   # "Next: Tutorial N+1" links on
                nxt = cdp.eval("[...document.querySelectorAll('article a[href]')].map(a => a.href)")
                assert _url(base, path[i+1]) in nxt, (url, nxt)


def test_every_internal_link_resolves():
    "Every relative href/src in the built site points at a file that exists (what file:// and a static server both need)."
    import re, urllib.parse
    if not (build_docs.SITE/"index.html").exists(): build_docs.build()
    broken = []
    for page in build_docs.SITE.rglob("*.html"):
        if page.name == "404.html": continue   # a server's error page: its links are absolute by design
        for ref in re.findall(r'(?:href|src)="([^"]+)"', page.read_text(encoding="utf-8", errors="replace")):
            if re.match(r"[a-z][a-z0-9+.-]*:|#|//", ref): continue          # external, data:, javascript:, in-page
            target = urllib.parse.unquote(ref.split("#")[0].split("?")[0])
            if not target: continue
            p = (page.parent/target).resolve()
            if p.is_dir(): p = p/"index.html"
            if not p.exists(): broken.append(f"{page.relative_to(build_docs.SITE)} -> {ref}")
    assert not broken, broken[:20]


def test_chapters_put_their_tests_below_the_narrative(site):
    "A chapter reads as prose and examples; its test cells come after, under a 'Checks' heading."
    cdp, base = site["cdp"], site["base"]
    assert cdp.goto(_url(base, "06_evaluate.ipynb")) == []
    text = cdp.eval("document.querySelector('article').innerText")
    assert "Checks" in text and "test_eq(" in text
    head = text.index("This chapter's")
    assert text[:head].count("test_eq(") * 4 < text[head:].count("test_eq("), "most test cells show before the narrative ends"
