"Imports run one way: each module imports only modules of notebooks before its own (notebook order = dependency order)."
import ast, re
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent/"finetune_nb"


def notebook_of(py:Path)->str|None:
    "The notebook a generated module says it comes from (`File to edit: ../nbs/NAME.ipynb`)."
    m = re.search(r"File to edit: (?:\.\./)+nbs/(\S+)\.ipynb", py.read_text())
    return m.group(1) if m else None


def module_name(py:Path)->str:
    return ".".join(py.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__")


def imported(py:Path, mods:set[str])->set[str]:
    "Every finetune_nb module `py` imports, at any depth (function-level imports count too)."
    me, out = module_name(py).split("."), set()
    for node in ast.walk(ast.parse(py.read_text())):
        if isinstance(node, ast.Import): out |= {a.name for a in node.names if a.name.startswith("finetune_nb.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = me[:len(me) - node.level] if py.name != "__init__.py" else me[:len(me) - node.level + 1]
                base = ".".join(pkg + ([node.module] if node.module else []))
            else: base = node.module or ""
            if not base.startswith("finetune_nb"): continue
            out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names}
    return out


def graph()->dict[str, tuple[str, set[str]]]:
    mods = {module_name(p): p for p in PKG.rglob("*.py")}
    g = {}
    for name, p in mods.items():
        nb = notebook_of(p)
        if nb is None: continue
        g[name] = (nb, {m for m in imported(p, set(mods)) if m in mods and m != name and notebook_of(mods[m])})
    return g


def test_imports_follow_notebook_order():
    g = graph()
    assert {"finetune_nb.core", "finetune_nb.data", "finetune_nb.models", "finetune_nb.lora"} <= set(g)
    bad = [f"{m} ({nb}) imports {d} ({g[d][0]})" for m, (nb, deps) in g.items() for d in deps if g[d][0] >= nb]
    assert not bad, "imports against notebook order:\n" + "\n".join(bad)


def test_module_graph_is_acyclic():
    g, state = graph(), {}
    def visit(m, path):
        if state.get(m) == "done": return
        assert state.get(m) != "open", "import cycle: " + " -> ".join(path + [m])
        state[m] = "open"
        for d in sorted(g[m][1]): visit(d, path + [m])
        state[m] = "done"
    for m in sorted(g): visit(m, [])
