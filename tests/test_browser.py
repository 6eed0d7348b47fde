"""ranch as a new user meets it: JupyterLab, then Jupyter Notebook 7, started from the
project's venv, driven headless in Debian's Chromium by Playwright, opening the quickstart
notebook and running it ("Run All"). Asserts
on what the page shows: the live status table updating and then settling, output labelled by
rank, a failing rank's report rendered as a table. The screenshots it takes are kept under
tests/artifacts/browser/ (RANCH_TEST_ARTIFACTS overrides the place; Notebook 7's are named
notebook7-*); Lab's live-cell.png is the README's picture (copied to
notebooks/images/live-table.png)."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("RANCH_TEST_ARTIFACTS", ROOT / "tests" / "artifacts")) / "browser"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (install/browser.sh installs it)")
if not CHROMIUM:
    pytest.skip("Debian's chromium is not installed (install/browser.sh installs it as root)", allow_module_level=True)

# Everything the page shows of the notebook's code cells, in order: each cell's input, the
# text of its outputs, its status tables (text and whether still live), its failure tables,
# and whether it is still queued or running ("[*]").
CELLS_JS = """() => {
    // textContent, not innerText: it does not depend on a cell being laid out.
    const table = t => [...t.querySelectorAll('tr')]
        .map(r => [...r.querySelectorAll('th,td')].map(c => c.textContent.trim()).join(' | ')).join('\\n');
    return [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')].map(c => ({
        input: [...c.querySelectorAll('.jp-InputArea-editor .cm-line')].map(l => l.textContent).join('\\n'),
        prompt: c.querySelector('.jp-InputArea-prompt')?.textContent ?? '',
        outputs: [...c.querySelectorAll('.jp-OutputArea-output')].map(o => o.textContent).join('\\n'),
        status: [...c.querySelectorAll('table.ranch-status')].map(table),
        live: c.querySelectorAll('.ranch-status-live').length,
        failure: [...c.querySelectorAll('table.ranch-failure')].map(table),
    }));
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Each front end: its `jupyter` subcommand, its configurable app, where it opens a notebook,
# and the prefix of its screenshots.
FRONT_ENDS = {
    "lab": ("lab", "LabApp", "lab/tree", ""),
    "notebook7": ("notebook", "JupyterNotebookApp", "notebooks", "notebook7-"),
}


@pytest.fixture(scope="module", params=list(FRONT_ENDS))
def lab(request, tmp_path_factory):
    """JupyterLab (or Notebook 7) from the venv, serving fresh copies of the quickstart and
    pool notebooks (outputs cleared)."""
    command, app, opens, shots = FRONT_ENDS[request.param]
    if command == "notebook" and not (Path(sys.executable).parent / "jupyter-notebook").exists():
        pytest.skip("Jupyter Notebook 7 is not installed in the venv (install/requirements.txt has it)")
    home = tmp_path_factory.mktemp(request.param)
    root = home / "notebooks"
    root.mkdir()
    for name in ("quickstart.ipynb", "pool.ipynb"):
        nb = json.loads((ROOT / "notebooks" / name).read_text())
        for c in nb["cells"]:
            if c["cell_type"] == "code":
                c["outputs"], c["execution_count"] = [], None
        (root / name).write_text(json.dumps(nb))
    settings = {
        # Every cell stays in the page (no windowing), so the test can read each one.
        "notebook-extension/tracker": {"windowingMode": "none"},
        # No "get Jupyter news?" toast over the screenshots.
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }
    for name, values in settings.items():
        path = home / "settings" / "@jupyterlab" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = free_port(), secrets.token_hex(16)
    jupyter = Path(sys.executable).parent / "jupyter"
    log = open(home / "lab.log", "w")
    proc = subprocess.Popen(
        [str(jupyter), command, "--no-browser", f"--port={port}", "--ip=127.0.0.1", f"--ServerApp.root_dir={root}",
         f"--IdentityProvider.token={token}", f"--{app}.expose_app_in_browser=True",
         f"--{app}.user_settings_dir={home / 'settings'}", f"--{app}.workspaces_dir={home / 'workspaces'}",
         "--ServerApp.allow_root=True"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"jupyter {command} did not start:\n{(home / 'lab.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield f"{url}/{opens}", token, home, shots
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_quickstart_in_the_browser(lab):
    url, token, home, shots = lab
    # Only this run's pictures: Lab's run clears the folder, Notebook 7's its own.
    if shots:
        for old in ARTIFACTS.glob(f"{shots}*"):
            old.unlink()
    else:
        shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with browser_page(home, shots) as page:
        run_quickstart(page, url, token, shots)


@contextlib.contextmanager
def browser_page(home, shots, what=""):
    """A page in headless Chromium; when the test fails, a screenshot and the server's log
    (`{shots}{what}failed.png`, `{shots}{what}lab.log`) are kept with the artifacts."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        # --no-sandbox: Chromium's sandbox needs user namespaces a container (or root) may lack.
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            yield page
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / f"{shots}{what}failed.png"), full_page=True)
            (ARTIFACTS / f"{shots}{what}lab.log").write_text((home / "lab.log").read_text())
            raise
        finally:
            browser.close()


def kernel_status(page) -> str:
    return page.evaluate("() => window.jupyterapp?.shell?.currentWidget?.sessionContext?.session?.kernel?.status ?? ''")


def progress(table: str) -> int:
    """The furthest rank's progress in a status table's text (0 when none is shown)."""
    done = [int(line.split("/40")[0].split()[-1]) for line in table.splitlines() if "/40" in line]
    return max(done, default=0)


def start_run_all(page, url, token, notebook):
    """Opens `notebook`, waits for its kernel, and starts "Run All" (as a user's click)."""
    page.goto(f"{url}/{notebook}?token={token}")
    page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=60_000)
    page.evaluate("() => window.jupyterapp.shell.collapseLeft?.()")
    deadline = time.time() + 120
    while kernel_status(page) != "idle":
        assert time.time() < deadline, f"the ranch kernel did not become idle (status {kernel_status(page)!r})"
        time.sleep(0.25)
    # Not awaited: the command's promise settles only when every cell has run.
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")


def run_quickstart(page, url, token, shots):
    start_run_all(page, url, token, "quickstart.ipynb")

    # Watch every cell while the notebook runs: the paced cell's table, as it was drawn.
    paced_tables: list[tuple[str, int]] = []
    live_shot = cell_shot = False
    deadline = time.time() + 600
    while True:
        cells = page.evaluate(CELLS_JS)
        paced = next(c for c in cells if "ranch::progress(i + 1, steps)" in c["input"])
        for table in paced["status"]:
            if not paced_tables or paced_tables[-1] != (table, paced["live"]):
                paced_tables.append((table, paced["live"]))
        if paced["live"] and not live_shot and "[*]" in paced["prompt"] and "/40" in "".join(paced["status"]):
            page.locator(".jp-CodeCell", has_text="ranch::progress(i + 1, steps)").scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / f"{shots}live-table.png"))
            live_shot = True
        if paced["live"] and not cell_shot and max(progress(t) for t in paced["status"] or [""]) >= 20:
            # The cell alone, half-way: the README's picture.
            page.locator(".jp-CodeCell", has_text="ranch::progress(i + 1, steps)").screenshot(path=str(ARTIFACTS / f"{shots}live-cell.png"))
            cell_shot = True
        running = [c for c in cells if "[*]" in c["prompt"]]
        if not running and cells[-1]["outputs"]:
            break
        assert time.time() < deadline, f"the notebook did not finish: {[c['input'][:30] for c in running]}"
        time.sleep(0.1)
    page.screenshot(path=str(ARTIFACTS / f"{shots}quickstart.png"), full_page=True)

    # The live table was drawn while the ranks ran, redrawn as they progressed, and settled.
    live = [t for t, is_live in paced_tables if is_live]
    assert len(live) >= 2, f"the table was not redrawn while the ranks ran: {paced_tables}"
    assert any("running" in t for t in live), live
    bars = {progress(t) for t in live}
    assert len(bars) >= 2, f"progress did not move on the page: {bars}"
    final, still_live = paced_tables[-1]
    assert not still_live, "the table still says it is running after the cell ended"
    rows = [line for line in final.splitlines()[1:] if line.strip()]
    assert len(rows) == 4 and all("done" in r and "40/40" in r for r in rows), final

    # Output labelled by rank, each line once.
    hello = next(c for c in cells if 'println!("hello from' in c["input"])
    for r in range(4):
        assert hello["outputs"].count(f"[{r}] hello from {r} of 4") == 1, hello["outputs"]

    # The failing rank: a failure table before the error, and the error names rank and line.
    failing = cells[-1]
    assert len(failing["failure"]) == 1, failing
    assert "rank 2 found a bad record" in failing["failure"][0] and "panicked" in failing["failure"][0], failing["failure"]
    assert "rank 2 panicked at cell line 5" in failing["outputs"], failing["outputs"]
    page.locator(".jp-CodeCell").last.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"{shots}failure.png"))
    # Nothing else failed.
    errors = [c["input"][:40] for c in cells[:-1] if "Error" in c["outputs"] and "rank 2 found" not in c["outputs"]]
    assert not errors, errors


def test_pool_notebook_runs_all_past_its_tagged_panic(lab):
    """The pool notebook's deliberate failures (a panic, a rank killed) are tagged
    `raises-exception`: "Run All" goes on past them to `%ranch_stop` (the front end sends that cell with stop_on_error off, and the
    kernel then aborts nothing queued behind it)."""
    url, token, home, shots = lab
    with browser_page(home, shots, "pool-") as page:
        start_run_all(page, url, token, "pool.ipynb")
        deadline, quiet_since = time.time() + 600, None
        while True:
            cells = page.evaluate(CELLS_JS)
            # Done when nothing has run or been queued for a while (an aborted cell is
            # never run: its prompt stays empty).
            busy = any("[*]" in c["prompt"] for c in cells) or kernel_status(page) != "idle"
            quiet_since = None if busy else quiet_since or time.time()
            if quiet_since and time.time() - quiet_since > 3 and any(any(ch.isdigit() for ch in c["prompt"]) for c in cells):
                break
            assert time.time() < deadline, f"the pool notebook did not finish: {[c['prompt'] for c in cells]}"
            time.sleep(0.2)
        panic = next(i for i, c in enumerate(cells) if 'panic!("rank 2 found a bad record")' in c["input"])
        assert "rank 2 found a bad record" in cells[panic]["outputs"], cells[panic]
        after = cells[panic + 1:]
        assert [c["input"].strip().splitlines()[0] for c in after] == \
            ["%px shard.len()", "%%px", "%px shard.len()", "%ranch_status", "%ranch_stop"], after
        # The second deliberate failure: rank 3 killed, restarted alone.
        killed = after[1]
        assert "Rank 3 was killed by signal 9" in killed["outputs"], killed
        for c in after:
            assert any(ch.isdigit() for ch in c["prompt"]) and (c is killed or "Error" not in c["outputs"]), c
        assert "Stopped the pool's 4 ranks." in after[-1]["outputs"], after[-1]
