"""`jupyter console` on a pseudo-terminal: multi-line input waits for the rest (is_complete),
and values come back as `Out[n]`."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pexpect

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
    finally:
        # Killed rather than exited: the kernel notices its frontend is gone and exits too.
        child.terminate(force=True)
    deadline = time.monotonic() + 10
    while kernels() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert kernels() == [], "the kernel outlived its console"


def kernels():
    out = subprocess.run(["pgrep", "-f", "ranch-kernel --connection-file"], capture_output=True, text=True).stdout
    return out.split()
