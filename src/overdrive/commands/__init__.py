"""The ``overdrive`` command line: ``cli.py`` is the entry point, one module per subcommand.

Everything in this package imports only the standard library and :mod:`overdrive.settings` at module level, so
``overdrive --help`` starts without importing torch. A subcommand raises :class:`UsageError` for bad input; the entry
point prints it under the subcommand's usage line and exits with code 2, as argparse does.

Example:
    >>> from overdrive.commands import UsageError
    >>> issubclass(UsageError, ValueError)
    True
"""

from __future__ import annotations

import argparse
import difflib
from typing import Any

__all__ = ["UsageError", "command_parser", "unknown_option_message"]


class UsageError(ValueError):
    """Bad command-line input, found before anything was started; the message names the value and the fix.

    Example:
        >>> str(UsageError("--num_processes=0 must be at least 1"))
        '--num_processes=0 must be at least 1'
    """


def command_parser(subparsers: Any, name: str, text: str, **options: Any) -> argparse.ArgumentParser:
    """The parser of ``overdrive NAME``: a sub-parser of ``overdrive`` when ``subparsers`` is given, else standalone
    (``prog="overdrive NAME"``); ``text`` is its help and description, abbreviations of options are off.

    Example:
        >>> command_parser(None, "env", "Print things.").prog
        'overdrive env'
    """
    options = {"description": text, "allow_abbrev": False, **options}
    if subparsers is not None:
        return subparsers.add_parser(name, help=text, **options)  # type: ignore[no-any-return]
    return argparse.ArgumentParser(prog=f"overdrive {name}", **options)


def unknown_option_message(parser: argparse.ArgumentParser, token: str) -> str:
    """Explain that ``token`` is not an option of ``parser`` and suggest the closest one that is.

    Example:
        >>> p = argparse.ArgumentParser(prog="demo")
        >>> _ = p.add_argument("--num_processes")
        >>> unknown_option_message(p, "--num_procs=2")
        "unrecognized option '--num_procs'; did you mean '--num_processes'? (run `demo --help` for every option)"
    """
    name = token.split("=", 1)[0]
    # argparse keeps no public list of option strings; its actions are the one source of truth.
    known = [s for action in parser._actions for s in action.option_strings]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unrecognized option {name!r}; {hint}(run `{parser.prog} --help` for every option)"
