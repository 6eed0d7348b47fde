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
        ok(execute(kc, "%ranch_start 3", timeout=600))
        ok(execute(kc, "%%px\nlet mut kept = vec![ranch::rank() as u64; 4];", timeout=600))
        before = pids(kc)
        died = execute(kc, "%%px\nif ranch::rank() == 1 { std::process::abort(); }\nkept.push(7);", timeout=600)
        assert died.error()["ename"] == "RankDied", died.error_text()
        said = died.error_text()
        assert "Rank 1 " in said and "SIGABRT" in said, said
        assert "Only rank 1 was restarted: ranks 0, 2 kept their variables" in said, said
        # The survivors kept their variables (and what the cell did to them); rank 1 sits out.
        run = ok(execute(kc, "%px kept.len()"))
        assert run.result() == "[5, 5]", run.result()
        assert "rank 1 sits this cell out" in run.stream("stderr"), run.stream("stderr")
        after = pids(kc)
        assert len(after) == 2 and after == [before[0], before[2]], (before, after)
        status = ok(execute(kc, "%ranch_status")).result()
        assert "no variables" in next(l for l in status.splitlines() if l.startswith("1 ")), status
        refused = execute(kc, "%px --targets 1 ranch::rank()")
        assert refused.error()["ename"] == "UsageError" and "restarted alone" in refused.error_text()

        # Killed between cells (as the OOM killer would): found and said by the next cell.
        os.kill(after[1], signal.SIGKILL)
        found = execute(kc, "%px kept.len()", timeout=600)
        assert found.error()["ename"] == "RankDied" and "Rank 2 was killed by signal 9" in found.error_text(), found.error_text()
        assert ok(execute(kc, "%px kept.len()")).result() == "[5]"

        # On purpose: the last rank with variables, alone; then no rank can run a cell.
        said = ok(execute(kc, "%ranch_restart --targets 0", timeout=600)).stream()
        assert "Restarted rank 0 alone" in said, said
        nobody = execute(kc, "%px kept.len()")
        assert nobody.error()["ename"] == "UsageError" and "%ranch_restart" in nobody.error_text()
        ok(execute(kc, "%ranch_restart", timeout=600))
        assert ok(execute(kc, "%px ranch::rank()", timeout=600)).result() == "[0, 1, 2]"
    finally:
        stop(km, kc)
