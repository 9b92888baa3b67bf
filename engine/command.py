"""The front door: `python run.py ...` and the `cifar-speedrun` command.

A request for help is answered from the torch-free parsers (engine/options.py), at
once; everything else goes to the program itself (engine/cli.py), which imports torch.
"""
from __future__ import annotations

import sys

from engine.options import (build_convert_parser, build_evaluate_parser, build_parser, build_tune_parser,
                            program_name)

HELP_FLAGS = ("-h", "--help")
SUBCOMMANDS = ("evaluate", "convert", "compare", "tune")


def main(argv=None, prog: str | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = prog or program_name(sys.argv[0])
    options = argv[:argv.index("--")] if "--" in argv else argv
    if any(flag in options for flag in HELP_FLAGS):
        subcommand = argv[0] if argv[:1] and argv[0] in SUBCOMMANDS else None
        try:
            help_parser(subcommand, prog).parse_args(argv[1:] if subcommand else argv)
        except SystemExit as exit:          # argparse printed the help (0) or an error (2)
            return exit.code if isinstance(exit.code, int) else 1
    from engine.cli import main as run
    return run(argv, prog)


def help_parser(subcommand: str | None, prog: str):
    if subcommand == "evaluate":
        return build_evaluate_parser(prog)
    if subcommand == "convert":
        return build_convert_parser(prog)
    if subcommand == "tune":
        return build_tune_parser(prog)
    if subcommand == "compare":
        from engine.results.compare import build_compare_parser      # torch-free as well
        return build_compare_parser(prog)
    return build_parser(prog)
