"""The ``circuitlab`` command: one module per subcommand, each with ``add_parser(subparsers, fmt)``.

This module builds the parser from :data:`COMMANDS` and turns errors into exit codes: 0 on
success, 2 for bad input (one line naming the value and the fix), 1 for anything else.
"""

from __future__ import annotations

import argparse
import sys

from circuitlab.cli import (circuit, data, demo, eval, features, graph, lens, models, probe, relevance, snmf,
                            supervised, sweep, train, value_scaling, zoo)
from circuitlab.cli.checks import check_args

COMMANDS = (demo, sweep, zoo, models, data, train, eval, circuit, graph, probe, snmf, features, supervised, lens,
            relevance, value_scaling)
"""Subcommand modules in ``--help`` order; each ``add_parser`` sets ``fn`` on its parser."""


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) that points at ``--help``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``circuitlab`` parser with every command of :data:`COMMANDS`."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = Parser(prog="circuitlab", description="Mechanistic-interpretability workbench.",
               epilog="run `circuitlab COMMAND --help` for examples", formatter_class=fmt)
    p.add_argument("--debug", action="store_true", help="show the full traceback of any error")
    sub = p.add_subparsers(dest="cmd", required=True)
    for command in COMMANDS:
        command.add_parser(sub, fmt)
    return p


def _bad_input() -> tuple[type, ...]:
    """Exceptions that mean the input (arguments, files, configs) is wrong, not circuitlab."""
    import json
    import tomllib

    return (ValueError, KeyError, OSError, json.JSONDecodeError, UnicodeError, tomllib.TOMLDecodeError)


def _one_line(e: BaseException | str) -> str:
    """An error as one line: a KeyError's message without quotes, an OSError as ``file: reason``."""
    import json

    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        msg = f"{e.filename}: {e.strerror}"
    lines = [l.strip() for l in str(msg).splitlines() if l.strip()]
    text = "; ".join(lines) or type(e).__name__
    if isinstance(e, json.JSONDecodeError) and "JSON" not in text:
        text = f"a JSON input file is malformed: {text}"
    return text


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success, 2 for bad input (one line on stderr naming the value and the fix), 1 for
    anything else; ``--debug`` shows the traceback instead of the one line."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a bad argument (2, message already printed)
        return e.code if isinstance(e.code, int) else 2
    try:
        check_args(args)
        args.fn(args)
    except _bad_input() as e:
        if args.debug:
            raise
        print(f"circuitlab {args.cmd}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except SystemExit as e:
        if args.debug or not isinstance(e.code, str):
            raise
        print(f"circuitlab {args.cmd}: error: {_one_line(e.code)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"circuitlab {args.cmd}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        print(f"circuitlab {args.cmd}: internal error: {type(e).__name__}: {_one_line(e)} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    return 0
