"""``demhec`` command line: train, finetune, evaluate and entropy over the library.

The flags of ``train``, ``finetune`` and ``evaluate`` are generated from the dataclasses
(:class:`~demhec.training.TrainConfig`, :class:`~demhec.training.DemHECConfig`,
:class:`~demhec.runs.TrainRun`, :class:`~demhec.runs.EvalRun`): name, default and help (the
field's comment), so a new field is a new flag without touching this module.

Every subcommand writes a checkpoint and/or a JSON result (config, metrics, provenance).
Bad input gets one line on stderr naming the bad value and the valid choices, and exit
code 2; no traceback, no partial output file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import inspect
import json
import logging
import os
import re
import signal
import sys
import tokenize
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._common import DemHECError, atomic_write, cli_words, parse_number

log = logging.getLogger("demhec")


# Flags the CLI sets itself rather than from the dataclasses: one --seed and one --device for
# every subcommand, the checkpoint path from --out, progress bars through --no-progress, and
# on_step, which a command line cannot give.
_OWN = {"seed", "device", "checkpoint", "progress", "on_step"}
# A checkpoint every 100 steps: a command-line run is the one most likely to be interrupted.
_CLI_DEFAULTS = {"checkpoint_every": 100}


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


def _plain(text: str) -> str:
    """Help text taken from docstrings and comments without their reST markup: ``x`` and
    :func:`x` become x, :class:`~a.b.C` becomes C."""
    text = re.sub(r":\w+:`~[^`]*?([^.`]+)`", r"\1", text)
    text = re.sub(r":\w+:`([^`]*)`", r"\1", text)
    return re.sub(r"``(.*?)``", r"\1", text)


def _comments(cls: type) -> dict[str, str]:
    """Each field's trailing comment in the dataclass's source: the flag's help."""
    out: dict[str, str] = {}
    lines = inspect.getsource(cls).splitlines()
    tokens = tokenize.generate_tokens(iter(line + "\n" for line in lines).__next__)
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            match = re.match(r"\s*(\w+)\s*:", lines[tok.start[0] - 1])
            if match:
                out[match.group(1)] = tok.string.lstrip("# ")
    return out


def _add_fields(p: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of the dataclass ``cls``: ``--field-name``, its default and its comment
    as help. Values are kept as text and converted by :func:`_from_args` inside ``main``'s error
    handling, so a bad one gets the dataclass's own one-line message."""
    helps = _comments(cls)
    for f in dataclasses.fields(cls):
        if f.name in _OWN or "Callable" in str(f.type):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = _CLI_DEFAULTS.get(f.name, f.default)
        text = _plain(helps.get(f.name, ""))
        if str(f.type) == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif str(f.type) == "bool | str":  # off, on (a bare flag) or a named variant
            p.add_argument(flag, nargs="?", const=True, default=default, help=f"{text} (default: off)")
        else:
            p.add_argument(flag, default=default, help=f"{text} (default: {default})".strip())


def _from_args(cls: type, args: argparse.Namespace, **given: Any) -> Any:
    """An instance of ``cls`` from the flags :func:`_add_fields` made (and ``given`` values)."""
    values = dict(given)
    for f in dataclasses.fields(cls):
        if f.name in given or f.name in _OWN or not hasattr(args, f.name):
            continue
        value, kind = getattr(args, f.name), str(f.type)
        if isinstance(value, str):
            if "from_text" in f.metadata:
                value = f.metadata["from_text"](value)
            elif kind.startswith("float"):
                value = parse_number(f.name, value)
            elif kind.startswith("int"):
                if not re.fullmatch(r"-?\d+", value.strip()):
                    raise DemHECError(f"{f.name} must be an integer, got {value!r}")
                value = int(value)
        values[f.name] = value
    return cls(**values)


def build_parser() -> argparse.ArgumentParser:
    from .runs import EvalRun, TrainRun
    from .training import DemHECConfig, TrainConfig

    parser = argparse.ArgumentParser(prog="demhec", description=_plain(__doc__.splitlines()[0]))
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a base model (CIFAR zoo recipe)")
    _common(p)
    _add_fields(p, TrainConfig)
    _add_fields(p, TrainRun)

    p = sub.add_parser("finetune", help="Dem-HEC fine-tuning of a base model (Alg. 1)")
    _common(p, weights=True)
    _add_fields(p, DemHECConfig)
    _add_fields(p, TrainRun)

    p = sub.add_parser("evaluate", help="accuracy on clean and corrupted data (eq. 1)")
    _common(p, weights=True)
    p.add_argument("--suite", default="cifar-c", help="cifar-c or imagecorruptions (generated), or the "
                   "released files under --data-root: cifar10-c, cifar100-c, tinyimagenet-c")
    p.add_argument("--corruptions", default="paper",
                   help="comma-separated names, 'paper' (the seven) or 'all' (fifteen)")
    p.add_argument("--severities", default="1,3,5")
    _other_dataset(p)
    _add_fields(p, EvalRun)

    p = sub.add_parser("entropy", help="layer-wise entropy of clean vs corrupted inputs (eq. 4)")
    _common(p, weights=True)
    p.add_argument("--suite", default="cifar-c")
    p.add_argument("--corruption", default="pixelate")
    p.add_argument("--severity", default="5")
    p.add_argument("--pooled", action="store_true", help="average conv maps spatially first")
    _other_dataset(p)

    p = sub.add_parser("convert-checkpoint",
                       help="rewrite a resume checkpoint of an older demhec in the safe format (a file you trust)")
    p.add_argument("path", help="the .ckpt file; it is rewritten in place")
    return parser


def _other_dataset(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-other-dataset", action="store_true",
                   help="score --weights on --dataset even when the file beside them says they were "
                   "trained on another dataset")


def convert(args: argparse.Namespace) -> int:
    from .training import convert_checkpoint

    try:
        convert_checkpoint(args.path)
    except DemHECError as e:
        print(f"demhec convert-checkpoint: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.path} is in the current checkpoint format")
    return 0


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
    from .data import load_named, subset

    root = Path(args.data_root)
    if args.dataset != "digits" and not args.download and not root.exists() and args.data_root != "data":
        raise DemHECError(f"--data-root {root} does not exist")
    from .distributed import barrier, is_main, rank_and_world

    # Under torchrun rank 0 downloads and fills the caches first; the others then read them.
    parallel = rank_and_world()[1] > 1
    if parallel and not is_main():
        barrier()
    arrays = load_named(args.dataset, split, args.data_root, download=args.download,
                        cache_dir=Path(args.out) / "cache", progress=not args.no_progress and is_main())
    if parallel and is_main():
        barrier()
    return subset(arrays, args.limit, seed=0) if args.limit else arrays


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
                 data={"train": getattr(data_train, "provenance", {}), "eval": data_eval.provenance,
                       "classes": list(data_eval.classes)},
                 seed=args.seed)


def _args_dict(args: argparse.Namespace) -> dict:
    from .distributed import rank_and_world

    out = {k: v for k, v in vars(args).items() if k not in ("verbose", "no_progress")}
    out["world_size"] = rank_and_world()[1]
    return out


# Settings that change where and how fast a run goes, not what it writes.
_RUN_ONLY = {"device", "workers", "checkpoint_every", "verbose", "no_progress", "world_size", "download"}


def _refuse_other_result(args: argparse.Namespace, path: Path) -> None:
    """Stop before any work when ``path`` holds the result of a run with other settings: a new
    run must not replace it silently."""
    if not path.exists() or not _is_main():
        return
    try:
        old = json.loads(path.read_text())["config"]["args"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # not one of ours, or damaged: the run replaces it
    new = json.loads(json.dumps(_args_dict(args), default=str))
    diff = sorted(k for k in set(old) | set(new) if k not in _RUN_ONLY and old.get(k) != new.get(k))
    if diff:
        raise DemHECError(f"{path} holds the result of a run with other settings (differs in {diff}); "
                          "delete it or choose another --out")


@contextlib.contextmanager
def _output_lock(args: argparse.Namespace):
    """One run at a time writes a command's outputs in ``--out``: a second one refuses, naming
    the holder (rank 0 alone writes under torchrun, so it alone locks)."""
    if not _is_main() or args.command == "entropy":
        yield
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", f".{args.command}-{args.dataset}-{args.backbone}.lock")
    with open(out / name, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise DemHECError(f"another run is writing demhec {args.command} outputs for {args.dataset}/"
                              f"{args.backbone} in {out} ({holder}); wait for it or use another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}: demhec {' '.join(sys.argv[1:])}"[:300])
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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


# Datasets with the same classes in the same order: a model of one scores the other's images.
_SAME_CLASSES = {"cifar10_jpeg": "cifar10"}


def _made_for(weights: Path) -> tuple[str, list[str] | None, Path] | None:
    """The dataset (and the classes, where recorded) a state dict was trained on, from the file
    beside it: the pipeline's ``<file>.fingerprint.json`` (its ``data.dataset``) or the JSON
    result ``demhec train`` / ``finetune`` wrote with it (``<stem>.json``); None without either."""
    side = weights.with_suffix(".fingerprint.json")
    with contextlib.suppress(OSError, ValueError, AttributeError):
        dataset = json.loads(side.read_text()).get("data.dataset")
        if isinstance(dataset, str):
            return dataset, None, side
    side = weights.with_suffix(".json")
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        rec = json.loads(side.read_text())
        if rec["kind"] in ("cli/train", "cli/finetune") and isinstance(rec["config"]["args"]["dataset"], str):
            classes = rec["data"].get("classes")
            return rec["config"]["args"]["dataset"], classes if isinstance(classes, list) else None, side
    return None


def _check_made_for(args: argparse.Namespace, weights: str, classes: list[str] | None = None) -> None:
    """Refuse to score ``weights`` on ``--dataset`` when the file beside them records another
    dataset (or, given the evaluation ``classes``, other classes) unless --allow-other-dataset;
    warn, before the data is read, when nothing beside them says."""
    path = Path(weights)
    if not path.is_file():
        return  # _model says that it is missing
    found = _made_for(path)
    if found is None:
        if classes is None and _is_main():
            print(f"demhec {args.command}: warning: {path} has no {path.with_suffix('.json').name} or "
                  f"{path.with_suffix('.fingerprint.json').name} beside it, so the dataset it was trained on "
                  f"cannot be checked against --dataset {args.dataset}", file=sys.stderr)
        return
    dataset, recorded, side = found
    if args.allow_other_dataset:
        return
    if _SAME_CLASSES.get(dataset, dataset) != _SAME_CLASSES.get(args.dataset, args.dataset):
        raise DemHECError(f"{path} was trained on {dataset} ({side.name}), not on --dataset {args.dataset}; "
                          "pass --allow-other-dataset to score it there anyway")
    if classes is not None and recorded is not None and list(recorded) != list(classes):
        raise DemHECError(f"{path} was trained on {dataset} with other classes ({side.name}) than "
                          f"--dataset {args.dataset} has here; pass --allow-other-dataset to score it there anyway")


def _train_run(args: argparse.Namespace, stem: Path) -> dict[str, Any]:
    from .runs import TrainRun

    return _from_args(TrainRun, args, device=args.device, checkpoint=stem.with_suffix(".ckpt"),
                      progress=not args.no_progress).keywords()


def cmd_train(args: argparse.Namespace) -> None:
    from .results import check_writable
    from .training import TrainConfig, train

    cfg = _from_args(TrainConfig, args, seed=args.seed)
    check_writable(args.out)
    tr, ev = _data(args, "train"), _data(args, "test")
    model = _model(args, len(tr.classes), None)
    stem = _stem(args, "base")
    _refuse_other_result(args, stem.with_suffix(".json"))
    train(model, tr, cfg, **_train_run(args, stem))
    _finish(args, stem, "cli/train", cfg, model, tr, ev)


def cmd_finetune(args: argparse.Namespace) -> None:
    from .results import check_writable
    from .training import DemHECConfig, finetune

    cfg = _from_args(DemHECConfig, args, seed=args.seed)
    check_writable(args.out)
    weights = args.weights or str(_stem(args, "base").with_suffix(".pt"))
    tr, ev = _data(args, "train"), _data(args, "test")
    model = _model(args, len(tr.classes), weights)
    stem = _stem(args, "demhec")
    _refuse_other_result(args, stem.with_suffix(".json"))
    finetune(model, tr, cfg, **_train_run(args, stem))
    _finish(args, stem, "cli/finetune", cfg, model, tr, ev, {"base_weights": Path(weights).name})


def _model_to_score(args: argparse.Namespace):
    """The weights to score (``--weights`` or the base the command line trained), the test split,
    and the model, after checking that the weights were made for this dataset and its classes."""
    weights = args.weights or str(_stem(args, "base").with_suffix(".pt"))
    _check_made_for(args, weights)
    ev = _data(args, "test")
    _check_made_for(args, weights, ev.classes)
    return weights, ev, _model(args, len(ev.classes), weights)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from ._common import check_choice
    from .corruptions import ALL_SUITES, check_corruption
    from .evaluation import evaluate
    from .results import check_writable, write_result
    from .runs import EvalRun

    check_choice("suite", args.suite, ALL_SUITES)
    corruptions = _corruptions(args.corruptions)
    for c in corruptions:
        check_corruption(c, args.suite)
    severities = [_severity(s) for s in args.severities.split(",")]
    check_writable(args.out)
    weights, ev, model = _model_to_score(args)
    _refuse_other_result(args, Path(args.out) / f"{Path(weights).stem}_{args.suite}.json")
    run = _from_args(EvalRun, args, device=args.device, progress=not args.no_progress)
    table = evaluate(model, ev, corruptions, severities, args.suite, seed=args.seed,
                     cache_dir=Path(args.out) / "cache", key=f"{args.dataset}-test", data_root=args.data_root,
                     download=args.download, **run.keywords())
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
    weights, ev, model = _model_to_score(args)
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
    if args.command == "convert-checkpoint":
        return convert(args)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from . import distributed

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # so worker pools and temporary files are cleaned up on the way out

    previous = signal.signal(signal.SIGTERM, stop) if _in_main_thread() else None
    try:
        from ._common import check_choice, check_device
        from .data import DATASETS_BY_PROFILE
        from .models import check_backbone

        check_device(args.device)
        check_choice("dataset", args.dataset, DATASETS_BY_PROFILE)
        check_backbone(args.backbone)
        if args.limit is not None and args.limit < 1:
            raise DemHECError(f"--limit must be >= 1, got {args.limit}")
        # Under torchrun: join the process group and take this rank's device.
        args.device = distributed.setup(args.device)
        if args.command == "entropy" and distributed.rank_and_world()[1] > 1:
            raise DemHECError("entropy runs in one process; launch it without torchrun")
        with cli_words(), _output_lock(args):
            COMMANDS[args.command](args)
        # Under torchrun, rank 0 still writes and prints when the others are done; leaving the
        # group together keeps a rank from tearing gloo down while its peer is still in it.
        distributed.barrier()
    except DemHECError as e:
        print(f"demhec {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"demhec {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    finally:
        distributed.teardown()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
