"""Shared arrays through a real kernel: `%ranch_share` makes a session vector one copy in
shared memory that ranks map (a cell naming it sends its name), their writes are seen in
the session, arrays made in a cell by name, and nothing is left in /dev/shm after the
kernel is killed."""
import os
import signal
import time

from conftest import execute, ok, start, stop


def test_a_shared_array_is_one_copy_for_the_session_and_every_rank():
    km, kc = start()
    try:
        ok(execute(kc, "let grid: Vec<f64> = vec![1.0; 1000];", timeout=300))
        said = ok(execute(kc, "%ranch_share grid")).stream()
        assert "`grid` is now a `ranch::shared::Array<f64>`" in said, said
        path = f"/dev/shm/ranch-{kc.pid}-array-grid"
        assert os.path.exists(path)
        # Each rank writes its quarter, in place: the session sees all of it (no copy back).
        run = ok(execute(kc, "%%ranch 4\nlet mut g = grid;\nlet r = ranch::rank();\n"
                             "for x in &mut g.as_mut_slice()[r * 250..(r + 1) * 250] { *x = r as f64; }\n"
                             "g.len()", timeout=300))
        assert run.result() == "[1000, 1000, 1000, 1000]", run.result()
        assert ok(execute(kc, "grid.iter().sum::<f64>()")).result() == "1500.0"
        # Made inside a cell by name, attached by name.
        ok(execute(kc, 'let mut made = ranch::shared::Array::<u32>::create("made", 4).unwrap();\n'
                       'made.as_mut_slice().copy_from_slice(&[1, 2, 3, 4]);'))
        run = ok(execute(kc, '%%ranch 2\nranch::shared::Array::<u32>::attach("made").unwrap().iter().sum::<u32>()', timeout=300))
        assert run.result() == "[10, 10]"
        wrong = execute(kc, '%%ranch 1\nranch::shared::Array::<f64>::attach("made").unwrap().len()', timeout=300)
        assert "holds `u32`" in wrong.error_text(), wrong.error_text()
        ok(execute(kc, 'let words = vec!["a".to_string()];'))
        refused = execute(kc, "%ranch_share words")
        assert refused.error()["ename"] == "UsageError" and "cannot be shared" in refused.error_text()
        # Dropped by the session: its name is gone.
        ok(execute(kc, "drop(made);"))
        assert not os.path.exists(f"/dev/shm/ranch-{kc.pid}-array-made")
        # Killed with -9: the janitor removes what is left.
        os.kill(kc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not os.path.exists(path), "the kernel's janitor removes its arrays"
    finally:
        stop(km, kc)
