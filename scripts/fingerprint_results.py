"""Give result JSONs written before fingerprints existed the fingerprint of what made them.

The pipeline reuses a result only when its fingerprint matches the request
(``demhec.results.cache_holds``); files written before that have none and are refused. This
rebuilds each one's fingerprint from its recorded config, exactly as the pipeline computes it for
the same request; config fields added since the file was written take their dataclass default,
and a record from before ``CORRUPTION_SEED`` was corrupted with its experiment's seed, which must
then be that seed. A record whose recorded base recipe is not the profile's is refused, not
guessed. Files that already have a fingerprint are left as they are. Usage::

    .venv/bin/python scripts/fingerprint_results.py results/gpu [more folders or files]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from demhec._common import DemHECError
from demhec.experiments.inputs import scored_on
from demhec.experiments.model_cache import model_spec
from demhec.experiments.pipeline import result_spec
from demhec.experiments.profiles import CORRUPTION_SEED, Experiment
from demhec.experiments.runs import NOISE
from demhec.results import fingerprint
from demhec.training import DemHECConfig, TrainConfig

PIPELINE_KINDS = ("robustness/", "paired/", "entropy/")


def _complete(cls, recorded: dict):
    values = dataclasses.asdict(cls())
    extra = sorted(set(recorded) - set(values))
    if extra:
        raise DemHECError(f"recorded config has fields {extra} that {cls.__name__} lacks")
    values.update(recorded)
    if isinstance(values.get("freeze"), list):
        values["freeze"] = tuple(values["freeze"])
    return cls(**values)


def record_fingerprint(path: Path, record: dict) -> dict:
    """The fingerprint the pipeline asks for when it requests what ``record`` holds."""
    c, e = record["config"], record["config"]["experiment"]
    exp = Experiment(profile=e["profile"], dataset=e["requested_dataset"], backbone=e["requested_backbone"],
                       seed=e["seed"], allow_train=False, base_epochs=e.get("base_epochs"))
    kind = record["kind"]
    phase, _, adapt = kind.split("/", 1)[1].partition("+")  # "before+bn": adapted at test time
    how = {"corruption_seed": c.get("corruption_seed", e["seed"])}
    if how["corruption_seed"] != CORRUPTION_SEED:
        raise DemHECError(f"{path}: corrupted with seed {how['corruption_seed']}, not {CORRUPTION_SEED}")
    if kind.startswith("robustness/after") or kind == "paired/after":
        model = model_spec(exp, "demhec", _complete(DemHECConfig, c["model"]))
    elif kind.startswith("robustness/"):
        if fingerprint({"x": _complete(TrainConfig, c["model"])}) != fingerprint({"x": exp.base_config}):
            raise DemHECError(f"{path}: its base recipe is not the {exp.profile} profile's")
        model = model_spec(exp, "base" if phase == "before" else phase)
    elif kind.startswith("entropy/"):
        if "log_width" not in record["metrics"]:
            raise DemHECError(f"{path}: an entropy result without its layers' widths (made before they were "
                              "recorded) is not what the pipeline asks for; recompute it")
        if phase == "before":
            model = model_spec(exp, "base")
        else:
            model = model_spec(exp, "demhec", _complete(DemHECConfig, c["model"]) if "model" in c else exp.demhec_config)
        scored = scored_on(c["suite"], corruption=c["corruption"], severity=c["severity"], pooled=c["pooled"],
                             images=exp.prof.entropy_images, images_seed=1, log_width=True)
        if "split" in c:  # drawn from a half of the evaluation split
            scored.update(split=c["split"], split_seed=c["split_seed"])
        return result_spec(exp, kind, model, **scored)
    else:
        raise DemHECError(f"{path}: unknown result kind {kind!r}")
    if kind == "paired/after":
        if c["corruptions"] != list(NOISE):
            raise DemHECError(f"{path}: paired over {c['corruptions']}, not {list(NOISE)}")
        return result_spec(exp, kind, model, run=c["run"], **scored_on(
            c["suite"], corruptions=c["corruptions"], severity=c["severity"]))
    scored = scored_on(c["suite"], corruptions=c["corruptions"], severities=c["severities"])
    if "split" in c:  # a half of the evaluation split (experiments.pipeline.halves_result)
        scored.update(split=c["split"], split_seed=c["split_seed"])
    if adapt:
        from demhec.adaptation import AdaptConfig

        scored["adapt"] = _complete(AdaptConfig, c["adapt"])
    return result_spec(exp, kind, model, **scored)


def stamp(path: Path) -> bool:
    """Add the fingerprint to the result at ``path``; False when it already has one."""
    record = json.loads(path.read_text())
    if "fingerprint" in record or not record.get("kind", "").startswith(PIPELINE_KINDS):
        return False  # stamped already, or not a pipeline cache (a benchmark's record, say)
    fp = record_fingerprint(path, record)
    out: dict = {}
    for key, value in record.items():
        if key == "versions":
            out["fingerprint"] = fp
        out[key] = value
    path.write_text(json.dumps(out, indent=1, allow_nan=False) + "\n")
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", help="result JSONs or folders holding them")
    args = p.parse_args(argv)
    files = [f for a in map(Path, args.paths) for f in (sorted(a.rglob("*.json")) if a.is_dir() else [a])
             if "tables" not in f.parts and "checkpoints" not in f.parts]
    try:
        stamped = [f for f in files if stamp(f)]
    except DemHECError as err:
        print(f"fingerprint_results: error: {err}", file=sys.stderr)
        return 2
    print(f"stamped {len(stamped)} of {len(files)} result files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
