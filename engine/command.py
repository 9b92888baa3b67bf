"""The front door: `python run.py ...` and the `cifar-speedrun` command.

A request for help is answered from the torch-free parsers (engine/options.py), at
once; so is a mistake they can see (an unknown option, a bad value, flags that cannot go
together): it is reported before torch loads. `compare` (engine/results/compare.py) reads
JSON only and runs without torch. Everything else goes to the program itself
(engine/cli.py), which imports torch.
"""
from __future__ import annotations

import sys

from engine.options import (build_convert_parser, build_evaluate_parser, build_parser, build_tune_parser,
                            pointless_flags, program_name)

SUBCOMMANDS = ("evaluate", "convert", "compare", "tune")


def main(argv=None, prog: str | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = prog or program_name(sys.argv[0])
    if argv[:1] == ["compare"]:
        from engine.results.compare import compare_main
        return compare_main(argv[1:], prog)
    subcommand = argv[0] if argv[:1] and argv[0] in SUBCOMMANDS else None
    parser = help_parser(subcommand, prog)
    try:                                    # help, and the mistakes a parser sees, before torch loads
        args = parser.parse_args(argv[1:] if subcommand else argv)
        if subcommand in (None, "tune"):        # tune takes the training options too
            for problem in pointless_flags(args):
                parser.error(problem)
    except SystemExit as exit:              # argparse printed the help (0) or an error (2)
        return exit.code if isinstance(exit.code, int) else 1
    if subcommand == "tune":               # engine/results/tune.py builds on engine/cli.py
        from engine.cli import interruptible
        from engine.results.tune import tune_main
        return interruptible(tune_main, argv[1:], prog)
    from engine.cli import main as run
    return run(argv, prog)


def help_parser(subcommand: str | None, prog: str):
    if subcommand == "evaluate":
        return build_evaluate_parser(prog)
    if subcommand == "convert":
        return build_convert_parser(prog)
    if subcommand == "tune":
        return build_tune_parser(prog)
    return build_parser(prog)
