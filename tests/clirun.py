"""`faceaudit` for the tests, two ways.

* :func:`as_process`: the real console script in a new process, as users run it. Each one
  imports FiftyOne (about 5 CPU-seconds here) and, for the model commands, torch (4 more): keep
  it for what only a process shows (exit codes of the real script, kills, commands at once,
  start-up notices, a fresh process's view of the database).
* :func:`in_process`: the same ``main()`` in this process, with its stdout and stderr captured
  and argparse's exits turned into return codes; for the many calls whose subject is what a
  command does, not how a process starts.
* :func:`faceaudit`: either of them, asserting exit code 0 unless told not to.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

FACEAUDIT = str(Path(sys.executable).with_name("faceaudit"))


def as_process(args, env=None, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """``faceaudit ARGS`` as a new process (text output captured)."""
    return subprocess.run([FACEAUDIT, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout, **kw)


def in_process(args, cwd=None) -> subprocess.CompletedProcess:
    """``faceaudit ARGS`` by ``cli.main.main`` in this process (in ``cwd`` if given)."""
    from cli.main import main

    out, err = io.StringIO(), io.StringIO()
    before = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:  # argparse's refusals
                code = e.code if isinstance(e.code, int) else 2
    finally:
        os.chdir(before)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def faceaudit(args, env=None, process=False, check=True, cwd=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``faceaudit ARGS`` in this process, or with ``process=True`` as the real console script;
    with ``check``, its exit code must be 0 (else its output is the assertion's message)."""
    proc = as_process(args, env, timeout=timeout, cwd=cwd) if process else in_process(args, cwd=cwd)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc
