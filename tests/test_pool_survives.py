"""A pool that survives its ranks: a rank whose process ends (in a cell, between cells, or
restarted on purpose with `%ranch_restart --targets`) is started again alone; the others keep
their variables, the cell's error says who and how, and the restarted rank sits the cells out
while the pool holds variables it lacks."""
import os
import signal

from conftest import execute, ok, start, stop


def pids(kc):
    return [int(p) for p in ok(execute(kc, "%px std::process::id()")).result().strip("[]").split(", ")]


def test_a_rank_that_dies_is_restarted_alone_and_the_others_keep_their_variables():
    km, kc = start()
    try:
        ok(execute(kc, "%ranch_start 4", timeout=600))
        ok(execute(kc, "%%px\nlet mut kept = vec![ranch::rank() as u64; 4];", timeout=600))
        before = pids(kc)
        # Killed with SIGKILL in the middle of a cell (as the OOM killer does).
        died = execute(kc, "%%px\nif ranch::rank() == 2 {\n"
                           '    std::process::Command::new("kill").args(["-9", &std::process::id().to_string()]).status().unwrap();\n'
                           "    std::thread::sleep(std::time::Duration::from_secs(5));\n"
                           "}\nkept.push(7);", timeout=600)
        assert died.error()["ename"] == "RankDied", died.error_text()
        said = died.error_text()
        assert "Rank 2 was killed by signal 9 (SIGKILL)." in said, said
        assert "Only rank 2 was restarted: ranks 0, 1, 3 kept their variables; it has none" in said, said
        # The other three kept their variables (and what the cell did to them); rank 2 sits out.
        run = ok(execute(kc, "%px kept.len()"))
        assert run.result() == "[5, 5, 5]", run.result()
        assert "rank 2 sits this cell out" in run.stream("stderr"), run.stream("stderr")
        after = pids(kc)
        assert after == [before[0], before[1], before[3]], (before, after)
        status = ok(execute(kc, "%ranch_status")).result()
        assert "no variables" in next(l for l in status.splitlines() if l.startswith("2 ")), status
        refused = execute(kc, "%px --targets 2 ranch::rank()")
        assert refused.error()["ename"] == "UsageError" and "restarted alone" in refused.error_text()

        # An abort (a C library's, `panic = "abort"`): said as such.
        died = execute(kc, "%%px\nif ranch::rank() == 1 { std::process::abort(); }", timeout=600)
        assert "Rank 1 " in died.error_text() and "SIGABRT" in died.error_text(), died.error_text()
        assert "ranks 0, 3 kept their variables" in died.error_text(), died.error_text()

        # Killed between cells: found and said by the next cell.
        os.kill(after[2], signal.SIGKILL)
        found = execute(kc, "%px kept.len()", timeout=600)
        assert found.error()["ename"] == "RankDied" and "Rank 3 was killed by signal 9" in found.error_text(), found.error_text()
        assert ok(execute(kc, "%px kept.len()")).result() == "[5]"

        # On purpose: the last rank with variables, alone; then no rank can run a cell.
        said = ok(execute(kc, "%ranch_restart --targets 0", timeout=600)).stream()
        assert "Restarted rank 0 alone" in said, said
        nobody = execute(kc, "%px kept.len()")
        assert nobody.error()["ename"] == "UsageError" and "%ranch_restart" in nobody.error_text()
        ok(execute(kc, "%ranch_restart", timeout=600))
        assert ok(execute(kc, "%px ranch::rank()", timeout=600)).result() == "[0, 1, 2, 3]"
    finally:
        stop(km, kc)
