"""Plain cells show exactly what the user's code produced, whatever ranch's caches hold:
on an empty cache directory, on the caches left by earlier kernels that used `:dep`s and
`%%ranch`, and on a copy of such caches in another place (a new machine's home, a CI
cache restore). Each kernel here gets its own cache directories (`XDG_CACHE_HOME`,
`RANCH_CACHE_DIR`), so this test never depends on, or changes, the machine's caches."""
import os
import shutil

from conftest import execute, local_crate, ok, start, stop

# (cell, exactly what it shows): streams merged per name, results as text/plain.
PLAIN = [
    ("1 + 1", [("execute_result", "2")]),
    ('println!("hello");', [("stdout", "hello\n")]),
    ('eprintln!("careful");\nlet x: u64 = 6;\nx * 7', [("stderr", "careful\n"), ("execute_result", "42")]),
    ("fn twice(v: u64) -> u64 { 2 * v }", []),
    ("twice(21)", [("execute_result", "42")]),
]


def shown(run):
    """What the cell showed, in order; consecutive stream messages of one name merged."""
    out = []
    for m in run.outputs:
        kind = m["msg_type"]
        if kind == "stream":
            name, text = m["content"]["name"], m["content"]["text"]
            if out and out[-1][0] == name:
                out[-1] = (name, out[-1][1] + text)
            else:
                out.append((name, text))
        elif kind in ("execute_result", "display_data"):
            out.append((kind, m["content"]["data"].get("text/plain")))
        else:
            out.append((kind, m["content"].get("evalue")))
    return out


def check_plain_cells(kc, when):
    for code, expected in PLAIN:
        run = ok(execute(kc, code, timeout=300))
        assert shown(run) == expected, f"{when}: {code!r}"


def kernel_on(cache):
    env = dict(os.environ, XDG_CACHE_HOME=str(cache), RANCH_CACHE_DIR=str(cache / "ranch"))
    return start(env=env)


def use_deps_and_ranch(kc, tmp_path):
    """What leaves state in the caches: :dep (also with features), %%ranch with session
    items and variables, a rank-only :dep."""
    ok(execute(kc, ':dep serde = { version = "1", features = ["derive"] }', timeout=300))
    _, dep = local_crate(tmp_path / "rank_only")
    ok(execute(kc, "fn triple(x: u64) -> u64 { x * 3 }\nlet base: u64 = 5;"))
    run = ok(execute(kc, "%%ranch 2\ntriple(base) + ranch::rank() as u64", timeout=300))
    assert run.result() == "[15, 16]"
    name, dep = local_crate(tmp_path / "rank_only2")
    assert ok(execute(kc, f"%%ranch 2\n{dep}\n{name}::answer()", timeout=300)).result() == "[42, 42]"


def test_plain_cells_are_clean_on_empty_used_and_copied_caches(tmp_path):
    cache = tmp_path / "cache"
    # An empty cache: the first kernel on a new machine.
    km, kc = kernel_on(cache)
    try:
        check_plain_cells(kc, "empty cache")
        use_deps_and_ranch(kc, tmp_path / "a")
        check_plain_cells(kc, "after :dep and %%ranch")
    finally:
        stop(km, kc)
    assert not (cache / "evcxr").exists(), "evcxr's compile cache stays off"

    # The caches that kernel left: the next kernel, and the sequence that once broke `:dep`.
    km, kc = kernel_on(cache)
    try:
        check_plain_cells(kc, "caches of an earlier kernel")
        ok(execute(kc, "fn triple(x: u64) -> u64 { x * 3 }\nlet base: u64 = 5;"))
        assert ok(execute(kc, "%%ranch 2\ntriple(base) + ranch::rank() as u64")).result() == "[15, 16]"
        ok(execute(kc, ':dep serde = { version = "1", features = ["derive"] }', timeout=300))
        check_plain_cells(kc, "after %%ranch and :dep on used caches")
    finally:
        stop(km, kc)

    # The same caches copied elsewhere (paths inside them no longer match).
    copied = tmp_path / "copied"
    shutil.copytree(cache, copied, symlinks=True)
    shutil.rmtree(cache)
    km, kc = kernel_on(copied)
    try:
        check_plain_cells(kc, "copied caches")
        use_deps_and_ranch(kc, tmp_path / "b")
        check_plain_cells(kc, "after :dep and %%ranch on copied caches")
    finally:
        stop(km, kc)


def test_a_second_kernel_at_the_same_time_gets_its_own_build_directory(tmp_path):
    cache = tmp_path / "cache"
    km1, kc1 = kernel_on(cache)
    km2, kc2 = kernel_on(cache)
    try:
        for kc in (kc1, kc2):
            check_plain_cells(kc, "two kernels at once")
        work = sorted(p.name for p in (cache / "ranch" / "work").iterdir() if p.is_dir())
        assert work == ["0", "1"], work
    finally:
        stop(km1, kc1)
        stop(km2, kc2)


def libcode_count(cache):
    return len(list((cache / "ranch" / "work").glob("*/evcxr/target/*/debug/libcode_*.so")))


def test_disk_use_stays_bounded_and_ranch_clean_frees_it(tmp_path):
    import fcntl
    cache = tmp_path / "cache"
    (cache / "ranch").mkdir(parents=True)
    # Runtime crates of two other ranch versions: one a running kernel still uses.
    unused, in_use = cache / "ranch" / "runtime-00000000000000aa", cache / "ranch" / "runtime-00000000000000bb"
    for d in (unused, in_use):
        (d / "src").mkdir(parents=True)
    held = open(cache / "ranch" / "runtime-00000000000000bb.lock", "w")
    fcntl.flock(held, fcntl.LOCK_SH)
    km, kc = kernel_on(cache)
    try:
        for i in range(4):
            ok(execute(kc, f"{i} + 1"))
        assert not unused.exists() and in_use.exists(), "unused versions go, used ones stay"
        left = libcode_count(cache)
        assert left >= 5, "the context's start-up build (the runtime in it) and four cells"
    finally:
        stop(km, kc)
    km, kc = kernel_on(cache)
    try:
        assert shown(ok(execute(kc, "1 + 1"))) == [("execute_result", "2")]
        assert libcode_count(cache) <= left - 3, "cells of earlier kernels are removed"
        for body in ("1", "2"):
            ok(execute(kc, f"%%ranch 2\n{body}", timeout=300))
        out = ok(execute(kc, "%ranch_clean")).stream()
        assert out.startswith("Removed 2 built rank programs of this session ("), out
        assert ok(execute(kc, "%%ranch 2\n3", timeout=300)).result() == "[3, 3]", "built again when needed"
        bad = execute(kc, "%ranch_clean --everything")
        assert bad.reply["content"]["ename"] == "UsageError"
        out = ok(execute(kc, "%ranch_clean --all")).stream()
        assert "this kernel's build directory" in out
        assert not list((cache / "ranch" / "work").glob("*/evcxr/target"))
        assert ok(execute(kc, "40 + 2", timeout=600)).result() == "42", "and the session works on"
    finally:
        stop(km, kc)
        held.close()
