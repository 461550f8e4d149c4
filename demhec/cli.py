"""``demhec`` command line: train, finetune, evaluate and entropy over the library.

Every subcommand writes a checkpoint and/or a JSON result (config, metrics, provenance).
Bad input gets one line on stderr naming the bad value and the valid choices, and exit
code 2; no traceback, no partial output file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ._common import DemHECError, atomic_write, parse_number

log = logging.getLogger("demhec")


def _common(p: argparse.ArgumentParser, weights: bool = False) -> None:
    p.add_argument("--dataset", required=True, help="digits, cifar10, cifar100, tinyimagenet, "
                   "imagenette, cifar10_jpeg")
    p.add_argument("--backbone", default="resnet20", help="a name from demhec.models.list_models(), timm:<name> or torchvision:<name>")
    p.add_argument("--data-root", default="data", help="where datasets live (default: data)")
    p.add_argument("--download", action="store_true", help="download missing datasets")
    p.add_argument("--out", default="results/cli", help="output folder for checkpoints and JSON")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    if weights:
        p.add_argument("--weights", default=None,
                       help="state dict to load (default: <out>/<dataset>_<backbone>_base.pt)")


def _train_args(p: argparse.ArgumentParser, defaults: object) -> None:
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=str, default=str(defaults.lr))
    p.add_argument("--checkpoint-every", type=int, default=100,
                   help="steps between resumable checkpoints (also at each epoch's end)")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: synchronise BatchNorm statistics across ranks (CUDA)")


def build_parser() -> argparse.ArgumentParser:
    from .training import DemHECConfig, TrainConfig

    parser = argparse.ArgumentParser(prog="demhec", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a base model (CIFAR zoo recipe)")
    _common(p)
    _train_args(p, TrainConfig())

    p = sub.add_parser("finetune", help="Dem-HEC fine-tuning of a base model (Alg. 1)")
    _common(p, weights=True)
    d = DemHECConfig()
    _train_args(p, d)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--alpha", default=str(d.alpha))
    p.add_argument("--eps", default="8/255", help="L-inf radius in pixel units, e.g. 8/255")
    p.add_argument("--step-size", default="2/255")
    p.add_argument("--steps", type=int, default=d.steps, help="ascent steps T_he")
    p.add_argument("--lambda-c", default=str(d.lambda_c))
    p.add_argument("--lambda-kd", default=str(d.lambda_kd))
    p.add_argument("--objective", default=d.objective, help="output or features")
    p.add_argument("--freeze", default="auto", help="auto, none, stages:N (stem + first N stages), after:N (all after stage N) or comma-separated prefixes")

    p = sub.add_parser("evaluate", help="accuracy on clean and corrupted data (eq. 1)")
    _common(p, weights=True)
    p.add_argument("--suite", default="cifar-c", help="cifar-c or imagecorruptions")
    p.add_argument("--corruptions", default="paper",
                   help="comma-separated names, 'paper' (the seven) or 'all' (fifteen)")
    p.add_argument("--severities", default="1,3,5")

    p = sub.add_parser("entropy", help="layer-wise entropy of clean vs corrupted inputs (eq. 4)")
    _common(p, weights=True)
    p.add_argument("--suite", default="cifar-c")
    p.add_argument("--corruption", default="pixelate")
    p.add_argument("--severity", default="5")
    p.add_argument("--pooled", action="store_true", help="average conv maps spatially first")
    return parser


def _severity(text: str) -> int:
    from .corruptions import check_severity

    try:
        value = int(text)
    except ValueError:
        raise DemHECError(f"severity must be an integer in 1..5, got {text!r}") from None
    check_severity(value)
    return value


def _corruptions(text: str) -> list[str]:
    from .corruptions import CORRUPTIONS, PAPER_CORRUPTIONS

    if text == "paper":
        return list(PAPER_CORRUPTIONS)
    if text == "all":
        return list(CORRUPTIONS)
    return [c.strip() for c in text.split(",") if c.strip()]


def _data(args: argparse.Namespace, split: str):
    from .experiments import _subset, load_named

    root = Path(args.data_root)
    if args.dataset != "digits" and not args.download and not root.exists() and args.data_root != "data":
        raise DemHECError(f"data root {root} does not exist")
    from .distributed import barrier, is_main, rank_and_world

    # Under torchrun rank 0 downloads and fills the caches first; the others then read them.
    parallel = rank_and_world()[1] > 1
    if parallel and not is_main():
        barrier()
    arrays = load_named(args.dataset, split, args.data_root, download=args.download,
                        cache_dir=Path(args.out) / "cache", progress=not args.no_progress and is_main())
    if parallel and is_main():
        barrier()
    return _subset(arrays, args.limit, seed=0) if args.limit else arrays


def _stem(args: argparse.Namespace, name: str) -> Path:
    # "timm:resnet18" -> "timm-resnet18": a colon is not a portable file-name character.
    return Path(args.out) / f"{args.dataset}_{args.backbone.replace(':', '-')}_{name}"


def _model(args: argparse.Namespace, num_classes: int, weights: str | None):
    from .models import get_model

    if weights is not None and not Path(weights).exists():
        raise DemHECError(f"weights file {weights} does not exist")
    return get_model(args.backbone, num_classes=num_classes, pretrained=weights or False).to(args.device)


def _result(args: argparse.Namespace, path: Path, kind: str, config: object, model, data_train, data_eval,
            extra: dict | None = None) -> None:
    from .evaluation import evaluate
    from .results import write_result

    table = evaluate(model, data_eval, [], [], device=args.device)
    if not _is_main():
        return
    write_result(path, kind=kind, profile="cli", config={"args": _args_dict(args), "config": config},
                 metrics={"clean_accuracy": float(table.accuracy.iloc[0]), **(extra or {})},
                 data={"train": getattr(data_train, "provenance", {}), "eval": data_eval.provenance},
                 seed=args.seed)


def _args_dict(args: argparse.Namespace) -> dict:
    from .distributed import rank_and_world

    out = {k: v for k, v in vars(args).items() if k not in ("verbose", "no_progress")}
    out["world_size"] = rank_and_world()[1]
    return out


def _is_main() -> bool:
    from .distributed import is_main

    return is_main()


def _finish(args: argparse.Namespace, stem: Path, kind: str, cfg: object, model, tr, ev,
            extra: dict | None = None) -> None:
    """Save the weights and the JSON result, then drop the resume checkpoint."""
    import torch

    if _is_main():
        with atomic_write(stem.with_suffix(".pt")) as f:
            torch.save(model.state_dict(), f)
    _result(args, stem.with_suffix(".json"), kind, cfg, model, tr, ev, extra)
    if _is_main():
        stem.with_suffix(".ckpt").unlink(missing_ok=True)
        print(f"wrote {stem.with_suffix('.pt')} and {stem.with_suffix('.json')}")


def cmd_train(args: argparse.Namespace) -> None:
    from .results import check_writable
    from .training import TrainConfig, train

    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=parse_number("lr", args.lr),
                      seed=args.seed)
    check_writable(args.out)
    tr, ev = _data(args, "train"), _data(args, "test")
    model = _model(args, len(tr.classes), None)
    stem = _stem(args, "base")
    train(model, tr, cfg, device=args.device, checkpoint=stem.with_suffix(".ckpt"),
          checkpoint_every=args.checkpoint_every, progress=not args.no_progress, sync_bn=args.sync_bn)
    _finish(args, stem, "cli/train", cfg, model, tr, ev)


def cmd_finetune(args: argparse.Namespace) -> None:
    from .results import check_writable
    from .training import DemHECConfig, finetune

    keyword = args.freeze in ("auto", "none") or args.freeze.startswith(("stages:", "after:"))
    freeze = args.freeze if keyword else tuple(args.freeze.split(","))
    cfg = DemHECConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=parse_number("lr", args.lr),
        alpha=parse_number("alpha", args.alpha), eps=parse_number("eps", args.eps),
        step_size=parse_number("step_size", args.step_size), steps=args.steps,
        lambda_c=parse_number("lambda_c", args.lambda_c),
        lambda_kd=parse_number("lambda_kd", args.lambda_kd), objective=args.objective,
        freeze=freeze, max_steps=args.max_steps, seed=args.seed,
    )
    check_writable(args.out)
    weights = args.weights or str(_stem(args, "base").with_suffix(".pt"))
    tr, ev = _data(args, "train"), _data(args, "test")
    model = _model(args, len(tr.classes), weights)
    stem = _stem(args, "demhec")
    finetune(model, tr, cfg, device=args.device, checkpoint=stem.with_suffix(".ckpt"),
             checkpoint_every=args.checkpoint_every, progress=not args.no_progress, sync_bn=args.sync_bn)
    _finish(args, stem, "cli/finetune", cfg, model, tr, ev, {"base_weights": Path(weights).name})


def cmd_evaluate(args: argparse.Namespace) -> None:
    from ._common import check_choice
    from .corruptions import SUITES, check_corruption
    from .evaluation import evaluate
    from .results import check_writable, write_result

    check_choice("suite", args.suite, SUITES)
    corruptions = _corruptions(args.corruptions)
    for c in corruptions:
        check_corruption(c, args.suite)
    severities = [_severity(s) for s in args.severities.split(",")]
    check_writable(args.out)
    weights = args.weights or str(_stem(args, "base").with_suffix(".pt"))
    ev = _data(args, "test")
    model = _model(args, len(ev.classes), weights)
    table = evaluate(model, ev, corruptions, severities, args.suite, seed=args.seed,
                     cache_dir=Path(args.out) / "cache", key=f"{args.dataset}-test",
                     device=args.device, progress=not args.no_progress)
    if not _is_main():
        return
    path = Path(args.out) / f"{Path(weights).stem}_{args.suite}.json"
    write_result(path, kind="cli/evaluate", profile="cli", config={"args": _args_dict(args)},
                 metrics={"clean_accuracy": float(table.accuracy.iloc[0]), "table": table},
                 data=ev.provenance, seed=args.seed)
    print(table.to_string(index=False, float_format="%.2f"))
    print(f"wrote {path}")


def cmd_entropy(args: argparse.Namespace) -> None:

    from .corruptions import check_corruption, corrupt_split
    from .entropy import layer_entropy
    from .evaluation import as_float_images
    from .results import check_writable, write_result

    check_corruption(args.corruption, args.suite)
    severity = _severity(args.severity)
    check_writable(args.out)
    weights = args.weights or str(_stem(args, "base").with_suffix(".pt"))
    ev = _data(args, "test")
    model = _model(args, len(ev.classes), weights)
    corrupted = corrupt_split(ev.images, args.corruption, severity, suite=args.suite, seed=args.seed)

    def run(images):
        x = as_float_images(images, args.device)
        return {n: e.mean().item() for n, e in
                layer_entropy(model, x, pooled=args.pooled, batch_size=256).items()}

    clean, corr = run(ev.images), run(corrupted)
    path = Path(args.out) / f"{Path(weights).stem}_entropy_{args.corruption}_s{severity}.json"
    write_result(path, kind="cli/entropy", profile="cli", config={"args": _args_dict(args)},
                 metrics={"mean_clean": clean, "mean_corrupted": corr}, data=ev.provenance,
                 seed=args.seed)
    for n in clean:
        print(f"{n:24s} clean {clean[n]:8.4f}  corrupted {corr[n]:8.4f}")
    print(f"wrote {path}")


COMMANDS = {"train": cmd_train, "finetune": cmd_finetune, "evaluate": cmd_evaluate,
            "entropy": cmd_entropy}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from . import distributed

    try:
        from ._common import check_choice
        from .experiments import DATASETS_BY_PROFILE
        from .models import check_backbone

        check_choice("dataset", args.dataset, DATASETS_BY_PROFILE)
        check_backbone(args.backbone)
        if args.limit is not None and args.limit < 1:
            raise DemHECError(f"--limit must be >= 1, got {args.limit}")
        # Under torchrun: join the process group and take this rank's device.
        args.device = distributed.setup(args.device)
        if args.command == "entropy" and distributed.rank_and_world()[1] > 1:
            raise DemHECError("entropy runs in one process; launch it without torchrun")
        COMMANDS[args.command](args)
    except DemHECError as e:
        print(f"demhec {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"demhec {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    finally:
        distributed.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
