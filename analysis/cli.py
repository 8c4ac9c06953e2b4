"""``fsrf analyze`` and ``fsrf export``: the trial store on the terminal, in Optuna, as a config.

    fsrf analyze PATH [PATH ...] [--metric M] [--mode min|max] [--top K] [--last]
                 [--status S] [--to-optuna URL|FILE] [--report DIR]
    fsrf export PATH [--rank 1] [--metric M] [--mode min|max] [--space FILE] -o best.yaml

:func:`main` takes the subcommand as its first element (``["analyze", "runs/exp"]``), as
``fsrf/cli.py`` passes it. Bad input prints ``fsrf analyze: error: <one line>`` on stderr
and returns 2.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from fsrf import FSRFError
from fsrf.constants import OBJECTIVE

COMMANDS = ("analyze", "export")


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are FSRFErrors (one line, exit 2 through :func:`main`)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise FSRFError(message)


def _metric_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", default=OBJECTIVE,
                   help="reported key to rank by, e.g. objective, valid/robust/MAE, valid/r0.5/MAE "
                        "(default: objective)")
    p.add_argument("--mode", choices=("min", "max"), default=None,
                   help="ranking direction (default: the metric's; for the objective, the search's)")
    p.add_argument("--last", action="store_true",
                   help="rank by each trial's last value, not its best over epochs")


def build_parser(command: str) -> argparse.ArgumentParser:
    """The parser of ``fsrf analyze`` or ``fsrf export``."""
    if command == "analyze":
        p = _Parser(prog="fsrf analyze", description="Leaderboard and status counts of tuning experiments.")
        p.add_argument("paths", nargs="+", metavar="PATH",
                       help="experiment directory (<storage>/<name>), its store/, or an s3:// URI")
        _metric_args(p)
        p.add_argument("--top", type=int, default=10, help="rows of the leaderboard (default: 10)")
        p.add_argument("--status", action="append", default=None,
                       help="only trials of this status (complete, pruned, error, running); repeatable")
        p.add_argument("--to-optuna", default=None, metavar="URL|FILE",
                       help="also write the trials into an Optuna storage: sqlite:///study.db or a "
                            "journal file")
        p.add_argument("--report", type=Path, default=None, metavar="DIR",
                       help="also write DIR/index.html with figures and CSV tables")
        p.add_argument("--space", default=None, help="space file to use instead of the experiment's own")
    else:
        p = _Parser(prog="fsrf export",
                    description="Write a trial's complete training config with its provenance.")
        p.add_argument("path", metavar="PATH", help="experiment directory, its store/, or an s3:// URI")
        p.add_argument("--rank", type=int, default=1,
                       help="the trial's rank by the metric (default: 1, the best)")
        _metric_args(p)
        p.add_argument("--space", default=None, help="space file to use instead of the experiment's own")
        p.add_argument("-o", "--out", type=Path, required=True, help="the YAML to write, e.g. best.yaml")
    return p


def _analyze(args: argparse.Namespace) -> int:
    from analysis._leaderboard import leaderboard, metric_mode, render_leaderboard
    from analysis._load import load_experiments

    experiments = load_experiments(args.paths)
    reduce = "last" if args.last else "best"
    width = shutil.get_terminal_size((160, 24)).columns
    for i, exp in enumerate(experiments):
        mode = args.mode or metric_mode(exp, args.metric)
        rows = leaderboard(exp, metric=args.metric, mode=mode, top=args.top, status=args.status,
                           reduce=reduce)
        text = render_leaderboard(exp, rows, metric=args.metric, mode=mode, reduce=reduce, width=width)
        print(("\n" if i else "") + text)
    if args.to_optuna is not None:
        from analysis._optuna_bridge import to_optuna

        for exp in experiments:
            study = to_optuna(exp, args.to_optuna, space=args.space)
            print(f"wrote {len(study.trials)} trials of {exp.name!r} to the Optuna study "
                  f"{study.study_name!r} in {args.to_optuna}")
    if args.report is not None:
        # --- report (analysis/_report.py, written separately) -----------------------------
        # write_report(experiments, out_dir, *, metric, mode, top) writes index.html, PNG figures
        # and CSV tables into out_dir and returns the index.html path. Imported lazily: it pulls
        # in matplotlib, which the terminal leaderboard does not need.
        try:
            from analysis._report import write_report
        except ModuleNotFoundError as err:
            if err.name not in ("analysis._report", "analysis"):
                raise
            raise FSRFError("--report: not available (analysis._report is not installed)") from None
        index = write_report(experiments, args.report, metric=args.metric, mode=args.mode, top=args.top)
        print(f"wrote {index or args.report}")
        # --- end of report ---------------------------------------------------------------
    return 0


def _export(args: argparse.Namespace) -> int:
    from analysis._export import export_config
    from analysis._load import load_experiment

    exp = load_experiment(args.path)
    out = export_config(exp, out=args.out, rank=args.rank, metric=args.metric, mode=args.mode,
                        space=args.space, reduce="last" if args.last else "best")
    print(f"wrote {out}; train it with: fsrf train --config {out} --out runs/{exp.name}-rank{args.rank}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``analyze ...`` or ``export ...``; returns the exit status (2 on bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else ""
    prog = f"fsrf {command}" if command in COMMANDS else "fsrf"
    try:
        if command not in COMMANDS:
            raise FSRFError(f"expected a subcommand, one of {', '.join(COMMANDS)}; "
                            f"got {command or 'nothing'!r}")
        args = build_parser(command).parse_args(argv[1:])
        return _analyze(args) if command == "analyze" else _export(args)
    except FSRFError as err:
        message = " ".join(str(err).split())  # one line, whatever the message held
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
