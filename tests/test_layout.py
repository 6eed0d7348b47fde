"""The code's layout, as the style guide asks: within each crate the modules import each
other without cycles, and the crates depend on each other in one direction (the runtime on
nothing of ours, the magics on no Jupyter crate). A cycle makes two modules one in all but
name; these checks say which modules form it."""
import os
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRATES = {"runtime": "ranch", "magics": "ranch-magics", "kernel": "ranch-kernel"}


def modules(src):
    """Each module of the crate under `src` (`a::b`), with its source less tests and comments."""
    found = {}
    for path in src.rglob("*.rs"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] in ("mod", "lib", "main"):
            parts = parts[:-1]
        text = path.read_text().split("#[cfg(test)]")[0]
        found["::".join(parts)] = "\n".join(l for l in text.splitlines() if not l.strip().startswith("//"))
    return found


def imports(name, text, mods):
    """The other modules of the crate that module `name` names by path."""
    here = name.split("::") if name else []
    out = set()
    for m in re.finditer(r"\b(crate|super)((?:::\w+)+)", text):
        path = m.group(2).strip(":").split("::")
        if m.group(1) == "crate":
            base = []
        else:
            base = here[:-1]
            while path and path[0] == "super":
                base, path = base[:-1], path[1:]
        full = base + path
        for k in range(len(full), 0, -1):
            candidate = "::".join(full[:k])
            if candidate in mods:
                if candidate != name:
                    out.add(candidate)
                break
    return out


def cycles(graph):
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_crate_has_an_import_cycle():
    for crate in CRATES:
        mods = modules(ROOT / crate / "src")
        assert len(mods) > 3, f"{crate}: the scan found no modules"
        graph = {n: imports(n, t, mods) for n, t in mods.items()}
        assert sum(map(len, graph.values())) > 0 or crate == "runtime", f"{crate}: the scan found no imports"
        found = cycles(graph)
        detail = [f"{c}: " + "; ".join(f"{a} -> {sorted(graph[a] & set(c))}" for a in c) for c in found]
        assert not found, f"{crate} has import cycles:\n" + "\n".join(detail)


def test_the_cycle_check_sees_a_cycle():
    mods = {"a": "use crate::b::x;", "b": "use super::a;", "c": "use crate::a;"}
    graph = {n: imports(n, t, mods) for n, t in mods.items()}
    assert cycles(graph) == [["a", "b"]]


def test_crates_depend_in_one_direction():
    def ours(crate):
        deps = tomllib.loads((ROOT / crate / "Cargo.toml").read_text()).get("dependencies", {})
        return set(deps)

    assert not ours("runtime") & set(CRATES.values()), "the runtime crate depends on nothing of ours"
    magics = ours("magics")
    assert "ranch-kernel" not in magics
    assert not {d for d in magics if "jupyter" in d or d == "zeromq"}, f"the magics crate knows no Jupyter: {magics}"
    assert "ranch-magics" in ours("kernel") and "ranch" in magics


def test_evcxr_is_reached_through_one_adapter():
    """evcxr's API, the names it generates into a cell's crate and its `:` commands are
    known in `session::adapter` only (the child protocol's marker lines are named once, in
    the runtime's `__rt::evcxr_lines`)."""
    adapter = ROOT / "kernel" / "src" / "session" / "adapter"
    assert list(adapter.glob("*.rs")), "the adapter moved: update this test"
    generated = ("evcxr_internal_runtime", "run_user_code_", "evcxr_variable_store", "EvcxrUserCodeError")
    commands = (":last_compile_dir", ":show_deps", ":linker", ":load_config")
    offenders = []
    for crate in ("kernel", "magics"):
        for path in (ROOT / crate / "src").rglob("*.rs"):
            if adapter in path.parents:
                continue
            code = "\n".join(l for l in path.read_text().splitlines() if not l.strip().startswith("//"))
            for needle in ("evcxr::",) + generated + commands:
                if needle in code:
                    offenders.append(f"{path.relative_to(ROOT)}: {needle}")
    assert not offenders, "only session::adapter may talk to evcxr:\n" + "\n".join(offenders)
