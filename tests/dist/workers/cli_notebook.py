"""Worker for tests/dist/test_cli_launch.py: run the sanity training of `overdrive test` through a Python launcher.

Usage: cli_notebook.py notebook PORT | debug. `notebook` calls notebook_launcher(main, num_processes=2,
use_port=PORT); `debug` calls debug_launcher(main). Each rank trains and compares with a plain PyTorch loop and
prints `overdrive test: rank R of 2 OK`; the parent prints `LAUNCHER DONE` after both ranks returned.
"""

from __future__ import annotations

import sys

from overdrive import debug_launcher, notebook_launcher
from overdrive.commands.sanity import main

if __name__ == "__main__":
    if sys.argv[1] == "notebook":
        notebook_launcher(main, num_processes=2, use_port=sys.argv[2])
    else:
        debug_launcher(main)
    sys.stdout.write("LAUNCHER DONE\n")
