"""The ``fsrf`` command line.

    fsrf train --config configs/synthetic.yaml --out runs/demo
    fsrf train --config configs/mosi.yaml --data /data/MOSI/Processed/unaligned_50.pkl --out runs/mosi
    fsrf train --config configs/mosi.yaml --out runs/mosi --resume      # continue from runs/mosi/last.pt
    fsrf evaluate --checkpoint runs/mosi/best.pt --data /data/MOSI/Processed/unaligned_50.pkl
    fsrf predict --checkpoint runs/mosi/best.pt --data new.pkl --modalities text,audio   # CSV of predictions with ids
    fsrf probe --checkpoint runs/demo/best.pt        # do the parts hold what they should? (R^2 table)
    fsrf prompts --config configs/mmslf.yaml --out prompts.csv   # synthetic per-clip prompts (data.prompts)
    fsrf models                                      # the registered models: paper, faithful, reconstructed
    fsrf compare --models fsrf plain tfn --config configs/recovery.yaml --budget 120 --final-seeds 3 --out compare/demo
    fsrf tune --space tuning/spaces/mosi.yaml --data ... --name mosi-robust   # = python tune.py ...
    fsrf store check runs/mosi-robust                # is the trial store whole and in step with Tune?
    fsrf store repair runs/mosi-robust               # quarantine what cannot be read, recover from Tune

Bad input prints one line ``fsrf: error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fsrf._constants import DOMAIN_TABLE, LAST_CHECKPOINT, PATTERN_TABLE, RANDOM_TABLE
from fsrf._errors import FSRFError


def _train(args: argparse.Namespace) -> int:
    from fsrf._config import with_overrides
    from fsrf._yaml import load_config
    from fsrf.train import train

    # --stage: a model trained in stages has a `stage` key in its section; applied with the --set pairs
    stage = [] if args.stage is None else [f"model.stage={args.stage}"]
    config = load_config(args.config, [*args.set, *stage])
    if args.data is not None:
        config = with_overrides(config, {"data.path": str(args.data)}, source="--data")
    out = Path(args.out)
    resume = None
    if args.resume:
        resume = out / LAST_CHECKPOINT
        if not resume.is_file():
            raise FSRFError(f"--resume: {resume} does not exist (nothing to resume in {out})")
    elif (out / LAST_CHECKPOINT).exists():
        raise FSRFError(
            f"--out: {out} already holds a run ({LAST_CHECKPOINT}); pass --resume to continue it "
            "or choose another directory"
        )
    result = train(config, out_dir=out, resume_from=resume, progress=not args.quiet, verbose=args.verbose)
    print(
        f"best epoch {result.best_epoch}: objective ({config.train.select_metric}, mean over "
        f"{len(config.missing.valid_rates)} validation rates) = {result.best_objective:.4f}"
    )
    print(f"wrote {out}/best.pt; next: fsrf evaluate --checkpoint {out}/best.pt")
    return 0


def _prompts(args: argparse.Namespace) -> int:
    from fsrf._run_data import synthetic_data
    from fsrf._yaml import atomic_write_text, load_config
    from fsrf.data._prompts import prompts_csv, synthetic_prompts

    config = load_config(args.config, args.set)
    if config.data.dataset != "synthetic" or config.data.path is not None:
        raise FSRFError("--config: fsrf prompts writes the planted-cue prompts of the synthetic data only; for "
                        "MMSA data use the CSV of MMSLF's preprocess/Generate_Prompt.py (video_id,clip_id,prompt)")
    rows = synthetic_prompts(synthetic_data(config.data), seed=args.seed, cue_noise=args.cue_noise)
    atomic_write_text(args.out, prompts_csv(rows))
    print(f"wrote {len(rows)} prompts to {args.out}; train with --set data.prompts={args.out}")
    return 0


def _restore(args: argparse.Namespace) -> tuple:
    """(state, config, dataset, model on its device, device) of ``--checkpoint`` (and ``--data``)."""
    from fsrf._checkpoint import checkpoint_config, load_checkpoint, load_weights
    from fsrf._config import with_overrides
    from fsrf._device import resolve_device
    from fsrf._run_data import load_dataset, unread_prompts_dropped
    from fsrf.model import build_model

    state = load_checkpoint(args.checkpoint)
    config = checkpoint_config(state, source=str(args.checkpoint))
    if args.data is not None:
        config = with_overrides(config, {"data.path": str(args.data)}, source="--data")
    device = resolve_device(args.device)
    model = build_model(config)
    load_weights(model, state, source=str(args.checkpoint))
    model.to(device)
    dataset = load_dataset(unread_prompts_dropped(config.data, model))  # an mmslf student reads none
    return state, config, dataset, model, device


def _evaluate(args: argparse.Namespace) -> int:
    from fsrf._device import eval_precision
    from fsrf.evaluate import modality_pattern_table, random_missing_table

    state, config, dataset, model, device = _restore(args)
    split = dataset.split(args.split)
    seed = config.missing.eval_seed if args.seed is None else args.seed
    batch_size = config.train.eval_batch_size if args.batch_size is None else args.batch_size
    common = {"dataset": dataset.name, "batch_size": batch_size, "device": device,
              "precision": eval_precision(device, config.train.precision)}
    random_table = random_missing_table(model, split, split_name=args.split, seed=seed, **common)
    pattern_table = modality_pattern_table(model, split, **common)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"eval-{args.split}"
    written = [*random_table.write(out, RANDOM_TABLE), *pattern_table.write(out, PATTERN_TABLE)]
    print(f"{dataset.name} {args.split} split, checkpoint epoch {state['epoch']}, random missing (seed {seed}):")
    print(random_table.to_text())
    print(f"\n{dataset.name} {args.split} split, whole-modality missing:")
    print(pattern_table.to_text())
    if config.data.domains:  # domain generalisation: the target domain under both protocols
        from fsrf.evaluate import domain_table

        where = "target domain" if args.split == "test" else "source domains' validation, not the target"
        table = domain_table(random_table, pattern_table, target=config.data.target,
                             sources=config.data.source_domains())
        written += table.write(out, DOMAIN_TABLE)
        print(f"\ndomain generalisation ({where}; {args.split} split):")
        print(table.to_text())
    print("\nwrote " + ", ".join(str(p) for p in written))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from fsrf._config import with_overrides
    from fsrf._inference import condition_name, default_out, load_model, predictions_csv
    from fsrf._run_data import load_dataset, unread_prompts_dropped
    from fsrf._yaml import atomic_write_text

    loaded = load_model(args.checkpoint, device=args.device)
    config = loaded.config
    if args.data is not None:
        config = with_overrides(config, {"data.path": str(args.data)}, source="--data")
    dataset = load_dataset(unread_prompts_dropped(config.data, loaded.model))  # an mmslf student reads none
    modalities = None if args.modalities is None else tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    names = ("train", "valid", "test") if args.split == "all" else (args.split,)
    rows = []
    for name in names:
        split = dataset.split(name)
        preds = loaded.predict(split, missing_rate=args.missing_rate, modalities=modalities, seed=args.seed,
                               split_name=name, batch_size=args.batch_size)
        rows += [(name, i, float(y), float(p)) for i, y, p in zip(split.ids, split.labels.tolist(), preds.tolist())]
    condition = condition_name(args.missing_rate, modalities)
    out = Path(args.out) if args.out else default_out(args.checkpoint, args.split)
    atomic_write_text(out, predictions_csv(rows, condition))
    print(f"{len(rows)} predictions ({', '.join(names)}; {condition}; checkpoint epoch {loaded.epoch}) -> {out}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    import json

    from fsrf._run_data import synthetic_data
    from fsrf._yaml import atomic_write_text
    from fsrf.probe import planted_factors, probe

    _, config, dataset, model, device = _restore(args)
    if config.model.name != "fsrf":
        raise FSRFError(f"--checkpoint: {args.checkpoint} holds model {config.model.name!r}; "
                        "fsrf probe reads FSRF's parts (model.name: fsrf)")
    factors: dict = {"fit_factors": None, "score_factors": None}
    if config.data.dataset == "synthetic" and config.data.path is None:
        generated = synthetic_data(config.data)  # the same seed gives the same samples and factors
        factors = {"fit_factors": planted_factors(generated, "valid"),
                   "score_factors": planted_factors(generated, "test")}
    report = probe(model, dataset.valid, dataset.test, device=device, **factors)
    print(report.to_text())
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "probe.json"
    atomic_write_text(out, json.dumps(report.to_dict(), indent=2))
    print(f"wrote {out}")
    return 0


def _models(args: argparse.Namespace) -> int:
    import textwrap

    from fsrf.model import model_class, model_names

    for name in model_names():
        cls = model_class(name)
        print(f"{name}: {cls.paper}")
        for label, text in (("faithful", cls.faithful), ("reconstructed", cls.deviations)):
            print(textwrap.fill(text, width=100, initial_indent=f"    {label}: ", subsequent_indent=" " * 8,
                                break_on_hyphens=False))
    return 0


def _version() -> str:
    from fsrf._provenance import version_line

    return version_line()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fsrf", description="FSRF for incomplete multimodal sentiment analysis.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("tune", help="Ray Tune x Optuna search (same arguments as tune.py; see fsrf tune --help)")
    sub.add_parser("analyze", help="leaderboard, importance and report of a search (see fsrf analyze --help)")
    sub.add_parser("export", help="a search trial's full training config (see fsrf export --help)")
    sub.add_parser("final", help="train several seeds, evaluate on test, write the table (see fsrf final --help)")
    sub.add_parser("compare", help="tune every model with the same budget and compare them in one table "
                   "(see fsrf compare --help)")
    sub.add_parser("store", help="check or repair a search's trial store: quarantine damaged files, recover "
                   "lost rows from Tune's result files (see fsrf store --help)")
    sub.add_parser("cluster", help="check a Ray cluster-launcher YAML before `ray up`: Ray's schema, this "
                   "project's invariants, placeholders, addresses, the key file (see fsrf cluster --help)")

    p = sub.add_parser("train", help="train a model; model selection on validation only")
    p.add_argument("--config", type=Path, default=None, help="config YAML (default: built-in synthetic defaults)")
    p.add_argument("--data", type=Path, default=None, help="MMSA pickle; overrides data.path")
    p.add_argument("--out", type=Path, required=True, help="run directory for checkpoints, history, TensorBoard")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value by dotted path, e.g. --set model.homo=0.5 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    talk = p.add_mutually_exclusive_group()
    talk.add_argument("-q", "--quiet", action="store_true", help="print only the result lines")
    talk.add_argument("-v", "--verbose", action="store_true",
                      help="one line per epoch beside the progress bar (without a terminal there is always one)")
    p.add_argument("--stage", default=None, metavar="STAGE",
                   help="for a model trained in stages (a `stage` key in its section, e.g. mmslf: teacher | "
                   "student): run only this stage; = --set model.stage=STAGE")
    p.set_defaults(func=_train)

    p = sub.add_parser("prompts", help="write the per-clip prompt CSV (planted cues) of the synthetic data, "
                       "for models that read prompts (data.prompts)")
    p.add_argument("--config", type=Path, default=None, help="config YAML of the synthetic data (default: built-in)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--out", type=Path, required=True, help="the CSV to write (video_id,clip_id,mode,prompt)")
    p.add_argument("--seed", type=int, default=0, help="seed of the cue noise and filler words (default: 0)")
    p.add_argument("--cue-noise", type=float, default=0.3,
                   help="std of the noise added to the clean score before binning it into a cue word (default: 0.3); "
                        "not read with data.synthetic_cue_frames, whose prompts name the window exactly")
    p.set_defaults(func=_prompts)

    p = sub.add_parser("evaluate", help="robustness tables of a checkpoint on the test split")
    p.add_argument("--checkpoint", type=Path, required=True, help="a best.pt or last.pt")
    p.add_argument("--data", type=Path, default=None, help="MMSA pickle (default: the path stored in the checkpoint)")
    p.add_argument("--split", choices=("test", "valid"), default="test", help="split to evaluate (default: test)")
    p.add_argument("--seed", type=int, default=None, help="seed of the fixed test masks (default: the config's missing.eval_seed)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="evaluation batch size (default: the checkpoint's train.eval_batch_size, as validation "
                   "used; the split runs in order, so a model that reads its batch (hme with model.neighbours: "
                   "batch) sees the batches validation saw)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--out", type=Path, default=None, help="where to write JSON/CSV (default: beside the checkpoint)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("predict", help="predictions of a checkpoint for every sample of a split, with ids, as CSV")
    p.add_argument("--checkpoint", type=Path, required=True, help="a best.pt or last.pt")
    p.add_argument("--data", type=Path, default=None, help="MMSA pickle (default: the path stored in the checkpoint)")
    p.add_argument("--split", choices=("test", "valid", "train", "all"), default="test", help="default: test")
    p.add_argument("--missing-rate", type=float, default=None,
                   help="random missing rate in [0, 1) with the evaluation's fixed masks (default: complete input)")
    p.add_argument("--modalities", default=None, metavar="M[,M]",
                   help="whole-modality missing: the present ones, e.g. text or audio,vision")
    p.add_argument("--seed", type=int, default=None, help="seed of the masks (default: the config's missing.eval_seed)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the config's train.eval_batch_size")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--out", type=Path, default=None, help="CSV to write (default: predictions-<split>.csv beside the checkpoint)")
    p.set_defaults(func=_predict)

    p = sub.add_parser("probe", help="R^2 of fresh linear probes of a checkpoint's parts (fit on valid, scored on test)")
    p.add_argument("--checkpoint", type=Path, required=True, help="a best.pt or last.pt")
    p.add_argument("--data", type=Path, default=None, help="MMSA pickle (default: the path stored in the checkpoint)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--out", type=Path, default=None, help="JSON file to write (default: probe.json beside the checkpoint)")
    p.set_defaults(func=_probe)

    p = sub.add_parser("models", help="the registered models (model.name): paper, what is faithful, what is reconstructed")
    p.set_defaults(func=_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fsrf`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["tune"]:  # the search's own parser (tuning/cli.py); Ray is imported only here
        from tuning.cli import main as tune_main

        return tune_main(argv[1:], prog="fsrf tune")
    if argv[:1] == ["final"]:  # final multi-seed training (tuning/_final.py, orchestration; Ray only if used)
        from tuning import final_main

        return final_main(argv[1:])
    if argv[:1] == ["compare"]:  # equal-budget searches + final seeds per model (analysis/_compare.py)
        from analysis import compare_main

        return compare_main(argv[1:])
    if argv[:1] == ["store"]:  # check/repair of a trial store (tuning/_store_repair.py; no Ray)
        from tuning import store_main

        return store_main(argv[1:])
    if argv[:1] == ["cluster"]:  # cluster YAML check (tuning/_cluster.py; Ray's schema, no cluster started)
        from tuning import cluster_main

        return cluster_main(argv[1:])
    if argv[:1] in (["analyze"], ["export"]):  # the trial store's readers (analysis/cli.py)
        from analysis.cli import main as analysis_main

        return analysis_main(argv)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except FSRFError as err:
        print(f"fsrf: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fsrf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
