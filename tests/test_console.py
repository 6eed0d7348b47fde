"""`jupyter console` on a pseudo-terminal: multi-line input waits for the rest (is_complete),
and values come back as `Out[n]`."""
import os
import sys
import time
from pathlib import Path

import pexpect

from conftest import alive, descendants

JUPYTER = str(Path(sys.executable).parent / "jupyter")


def test_console_continues_unfinished_items_and_shows_values():
    child = pexpect.spawn(JUPYTER, ["console", "--kernel", "ranch", "--ZMQTerminalInteractiveShell.confirm_exit=False"], encoding="utf-8", timeout=180,
                          dimensions=(40, 150), env=dict(os.environ, TERM="xterm"))
    try:
        # Prompts are coloured: allow escape sequences between the characters.
        child.expect(r"In \[\S*1\S*\]")
        child.sendline("fn add(a: i32,")
        child.expect(r"\.\.\.:")  # not complete: the console asks for more
        child.sendline("b: i32) -> i32 { a + b }")
        child.sendline("")
        child.expect(r"In \[\S*2\S*\]")
        child.sendline("add(2, 3)")
        child.expect(r"Out\[[^\]]{0,40}2[^\]]{0,40}\]:.{0,40}?5")
        # This console's kernel (not any other on the host).
        kernels = [p for p, cmd in descendants(child.pid).items() if "ranch-kernel --connection-file" in cmd]
        assert len(kernels) == 1, kernels
    finally:
        # Killed rather than exited: the kernel notices its frontend is gone and exits too.
        child.terminate(force=True)
    deadline = time.monotonic() + 10
    while alive(kernels[0]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(kernels[0]), "the kernel outlived its console"
