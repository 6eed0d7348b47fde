"""What a notebook user sees while ranks run: the live status table (shown, redrawn in place,
left in its final state), `ranch::progress`, `--quiet`, `--timing`, and rich output from
Rust (`ranch::display`), through a real kernel and real ranks."""
import re

import pytest

from conftest import execute, ok, start, stop


@pytest.fixture(scope="module")
def kc():
    km, kc = start()
    yield kc
    stop(km, kc)


def test_the_status_table_is_live_then_settles(kc):
    run = ok(execute(kc, "%%ranch 2\n"
                         "for i in 0..30u64 {\n"
                         "    ranch::progress(i + 1, 30);\n"
                         '    if i % 10 == 0 { println!("step {i}"); }\n'
                         "    std::thread::sleep(std::time::Duration::from_millis(50));\n"
                         "}\n"
                         "ranch::rank()", timeout=300))
    shown = run.status_messages()
    assert shown[0]["msg_type"] == "display_data", [m["msg_type"] for m in shown]
    ids = {m["content"]["transient"]["display_id"] for m in shown}
    assert len(ids) == 1, "one table, redrawn in place"
    updates = [m for m in shown if m["msg_type"] == "update_display_data"]
    assert len(updates) >= 2, "redrawn while the ranks ran"
    # At most a few redraws a second: the ranks ran ~1.5 s.
    span = run.arrival[run.outputs.index(shown[-1])] - run.arrival[run.outputs.index(shown[0])]
    assert len(updates) <= span / 0.25 + 2, (len(updates), span)
    assert any("running" in m["content"]["data"]["text/plain"] for m in shown[:-1])
    # While they run, each rank's pace and the time it has left, from its progress.
    assert any(re.search(r"\] \d+/30 [\d.]+/s ETA \d+ s", m["content"]["data"]["text/plain"]) for m in shown[:-1]), shown
    final = run.status()
    lines = final.splitlines()
    assert lines[0].split() == ["rank", "host", "pid", "GPU", "state", "elapsed", "lines", "progress", "last", "line"]
    for rank in (0, 1):
        row = lines[1 + rank].split()
        assert row[0] == str(rank) and row[2].isdigit() and row[4] == "done", final
        assert "[##########] 30/30  step 20" in lines[1 + rank], final
        assert row[7] == "3", final  # lines written (elapsed is two words)
    html = run.status("text/html")
    assert "<table" in html and "running..." not in html and "width:100%" in html
    assert run.result() == "[0, 1]", "the value is shown as before"


def test_a_failed_rank_is_marked_in_the_final_table(kc):
    run = execute(kc, "%%ranch 3\n"
                      'if ranch::rank() == 2 { panic!("bad shard"); }\n'
                      "std::thread::sleep(std::time::Duration::from_secs(30));")
    assert run.reply["content"]["status"] == "error"
    rows = {int(l.split()[0]): l for l in run.status().splitlines()[1:]}
    assert " panicked " in rows[2] and " stopped " in rows[0] and " stopped " in rows[1], run.status()


def test_quiet_shows_no_table_and_timing_shows_a_timeline(kc):
    run = ok(execute(kc, "%%ranch 2 --quiet --timing\nranch::rank()"))
    assert run.status_messages() == []
    charts = [d for d in run.displays() if "image/svg+xml" in d]
    assert len(charts) == 1, run.displays()
    svg = charts[0]["image/svg+xml"]
    assert svg.startswith("<svg") and "build" in svg and "rank 0" in svg and "rank 1" in svg
    assert charts[0]["text/plain"].startswith("export "), charts[0]
    assert "(last: rank " in charts[0]["text/plain"]


def test_progress_in_a_plain_cell_is_one_bar_redrawn_in_place(kc):
    run = ok(execute(kc, "for i in 0..5u64 {\n"
                         "    ranch::progress(i + 1, 5);\n"
                         "    std::thread::sleep(std::time::Duration::from_millis(150));\n"
                         "}"))
    bars = [m for m in run.outputs if m["msg_type"] in ("display_data", "update_display_data")]
    assert len(bars) >= 3, run.kinds()
    assert [m["msg_type"] for m in bars] == ["display_data"] + ["update_display_data"] * (len(bars) - 1)
    assert len({m["content"]["transient"]["display_id"] for m in bars}) == 1
    assert bars[-1]["content"]["data"]["text/plain"] == "[##########] 5/5"
    assert "width:100%" in bars[-1]["content"]["data"]["text/html"]
    assert bars[0]["content"]["metadata"] == {"ranch": {"progress": True}}
    # The next cell's bar is a new one.
    again = ok(execute(kc, "ranch::progress(1, 2); ranch::progress(2, 2);"))
    ids = {m["content"]["transient"]["display_id"] for m in again.outputs if "transient" in m["content"]}
    assert again.outputs[0]["msg_type"] == "display_data" and ids and ids.isdisjoint({bars[0]["content"]["transient"]["display_id"]})


def test_rich_output_from_rust_in_a_cell_and_in_ranks(kc):
    run = ok(execute(kc, 'let chart = ranch::display::svg("<svg xmlns=\'http://www.w3.org/2000/svg\'/>");\n'
                         'chart.update_html("<b>redrawn</b>");\n'
                         "ranch::display::clear_output();\n"
                         'ranch::display::html("<i>after</i>");'))
    kinds = [(m["msg_type"], m["content"].get("transient", {}).get("display_id")) for m in run.outputs]
    (k1, id1), (k2, id2), (k3, _), (k4, id4) = kinds
    assert (k1, k2, k3, k4) == ("display_data", "update_display_data", "clear_output", "display_data"), kinds
    assert id1 == id2 and id1 != id4 and id1.startswith("ranch-user-"), kinds
    assert run.outputs[1]["content"]["data"] == {"text/html": "<b>redrawn</b>"}
    assert run.result() is None, "a display request is never the cell's value"
    run = ok(execute(kc, "%%ranch 2 --quiet\n"
                         'let h = ranch::display::html(format!("<p>rank {}</p>", ranch::rank()));\n'
                         'h.update_html(format!("<p>rank {} done</p>", ranch::rank()));'))
    shown = [m for m in run.outputs if m["msg_type"] in ("display_data", "update_display_data")]
    assert sorted(m["content"]["metadata"]["ranch"]["rank"] for m in shown) == [0, 0, 1, 1]
    by_id = {}
    for m in shown:
        by_id.setdefault(m["content"]["transient"]["display_id"], []).append(m["content"]["data"]["text/html"])
    assert sorted(by_id.values()) == [["<p>rank 0</p>", "<p>rank 0 done</p>"], ["<p>rank 1</p>", "<p>rank 1 done</p>"]]


def test_px_cells_show_the_live_table_too(kc):
    ok(execute(kc, "%ranch_start 2", timeout=300))
    try:
        run = ok(execute(kc, "%%px\n"
                             "for i in 0..20u64 {\n"
                             "    ranch::progress(i + 1, 20);\n"
                             "    std::thread::sleep(std::time::Duration::from_millis(60));\n"
                             "}\n"
                             'println!("rank {} done", ranch::rank());\n'
                             "ranch::rank()", timeout=300))
        shown = run.status_messages()
        assert len({m["content"]["transient"]["display_id"] for m in shown}) == 1, "one table, redrawn in place"
        assert [m["msg_type"] for m in shown[:2]] == ["display_data", "update_display_data"], shown
        assert any("running" in m["content"]["data"]["text/plain"] for m in shown[:-1])
        lines = run.status().splitlines()
        for rank in (0, 1):
            row = lines[1 + rank].split()
            assert row[0] == str(rank) and row[2].isdigit() and row[4] == "done", lines
            assert lines[1 + rank].endswith(f"[##########] 20/20  rank {rank} done"), lines
        assert run.displays() == [], "progress feeds the table and is not shown otherwise"
        assert run.result() == "[0, 1]"

        run = execute(kc, "%%px --targets 1\n"
                          '{ if ranch::rank() == 1 { panic!("bad shard"); } }', timeout=300)
        assert run.reply["content"]["status"] == "error"
        rows = run.status().splitlines()[1:]
        assert len(rows) == 1 and rows[0].split()[0] == "1" and " panicked " in rows[0], rows

        assert ok(execute(kc, "%px ranch::rank()")).status_messages() == [], "a quick step shows no table"
        slow = "{ std::thread::sleep(std::time::Duration::from_millis(1500)); ranch::rank() }"
        assert len(ok(execute(kc, f"%px {slow}")).status_messages()) >= 2, "a slow one does, once it has run 1 s"
        assert ok(execute(kc, f"%px --quiet {slow}")).status_messages() == []
        run = execute(kc, '%%px\nlet y: u8 = "not a number";', timeout=300)
        assert run.reply["content"]["ename"] == "CompilationError"
        assert run.status_messages() == [], "a cell that does not compile never ran: no table"
    finally:
        execute(kc, "%ranch_stop")
