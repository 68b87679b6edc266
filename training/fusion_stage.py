"""Refitting a trained bundle's fusion weights so that they also hold on collections nobody trained on.

The joint stage fits the weights on the dev queries of the collections the student learned, where
MixLM is at its strongest, so they lean on MixLM more than a new collection warrants. Here the
fit adds *held-out* cases: a collection's dev queries scored by another student trained without
that collection, which stands for a catalog the shipped student has never seen. The weights that
win have the largest smallest gain over each case's best first stage (``fit_fusion``); they are
written into the bundle's ``mixlm.json`` with MixLM's scale over its own collections' dev queries,
the rest of the bundle unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

from mixlm.encoders.bundle import Bundle, load_bundle
from mixlm.encoders.config import CONFIG_NAME
from mixlm.schemas.beir import BeirDataset
from mixlm.schemas.errors import InputError
from mixlm.training.candidates import bm25_candidates
from mixlm.training.config import DataConfig
from mixlm.training.fusion_fit import FusionCase, fit_fusion, log_odds_scale
from mixlm.training.rerank_eval import candidate_runs
from mixlm.training.stages import training_data


def refit_fusion(bundle_dir: str | Path, data: DataConfig, held_out: Sequence[tuple[str | Path, str | Path]], *,
                 depth: int, log: Callable[[str], None]) -> dict:
    """Fit the bundle's fusion on its collections' dev queries and the held-out cases; returns the report."""
    bundle = load_bundle(bundle_dir)
    loaded: dict[Path, list[BeirDataset]] = {}  # a collection both trained on and held out is read once

    def devs_of(dataset_dir: str | Path) -> list[BeirDataset]:
        key = Path(dataset_dir).resolve()
        if key not in loaded:
            loaded[key] = dev_queries(dataclasses.replace(data, datasets=(str(dataset_dir),)))
        return loaded[key]

    unseen = []  # checked before anything is scored
    for student_dir, dataset_dir in held_out:
        student = load_bundle(student_dir)
        scale = _fitted_scale(student)
        for dev in devs_of(dataset_dir):
            _refuse_if_trained_on(student, dev.name)
            unseen.append((student, dev, student_dir, scale))
    own = [dev for dataset_dir in data.datasets for dev in devs_of(dataset_dir)]
    own_cases = [dev_case(bundle, dev, dev.name, depth, log) for dev in own]
    scale = log_odds_scale(case.mixlm_run for case in own_cases)  # the bundle's, over all its collections
    cases = [dataclasses.replace(case, mixlm_scale=scale) for case in own_cases]
    cases += [dev_case(student, dev, f"{dev.name} (unseen by {where})", depth, log, mixlm_scale=student_scale)
              for student, dev, where, student_scale in unseen]
    fitted_on = ", ".join([f"{dev.name}/{dev.split} ({len(dev.qrels)} queries)" for dev in own]
                          + [f"{dev.name}/{dev.split} ({len(dev.qrels)} queries) scored by {where}"
                             for _, dev, where, _ in unseen])
    fusion, report = fit_fusion(cases, fitted_on=fitted_on, mixlm_scale=scale)
    bundle.config = dataclasses.replace(bundle.config, fusion=fusion)
    _save_config(bundle)
    return {"bundle": str(bundle.path), "fusion": dataclasses.asdict(fusion), **report}


def dev_queries(data: DataConfig) -> list[BeirDataset]:
    """The dev splits carved from the collections' train queries (one per collection)."""
    _, devs = training_data(data, lambda line: None)
    if not devs:
        raise InputError(f"no dev queries in {', '.join(data.datasets)} to fit on: give --holdout-every N (N >= 2)")
    return devs


def _refuse_if_trained_on(student: Bundle, collection: str) -> None:
    """A student whose own fusion was fitted on a collection's dev queries was trained on that collection."""
    fitted_on = student.config.fusion.fitted_on if student.config.fusion else ""
    if any(part.strip().startswith(f"{collection}/") for part in fitted_on.split(",")):
        raise InputError(f"{student.path} was trained on {collection}, so it cannot stand for a collection "
                         "nobody trained on; give a student trained without it")


def _fitted_scale(student: Bundle) -> float:
    """A held-out student's MixLM scale, fitted on its own collections: it scores a collection it never saw as
    it would a new catalog, with the scale it brings from training."""
    fusion = student.config.fusion
    if fusion is None or fusion.mixlm_scale is None:
        raise InputError(f"{student.path} has no fitted MixLM scale; fit its fusion on its own collections "
                         f"first: mixlm train fusion --bundle {student.path} --dataset ITS_TRAINING_DATASET")
    return fusion.mixlm_scale


def dev_case(bundle: Bundle, dev: BeirDataset, name: str, depth: int, log, *,
             mixlm_scale: float | None = None) -> FusionCase:
    """``dev``'s queries with their BM25 top ``depth``, scored by ``bundle``; MixLM's scale is ``mixlm_scale``,
    or without one the ``log_odds_scale`` of these queries."""
    candidates = bm25_candidates(dev, depth)
    log(f"fusion: scoring {len(dev.qrels)} dev queries of {name} with {bundle.path}")
    dense_run, mixlm_run = candidate_runs(bundle, dev, candidates, log)
    scale = log_odds_scale([mixlm_run]) if mixlm_scale is None else mixlm_scale
    return FusionCase(name, dev.qrels, candidates, mixlm_run, dense_run, scale)


def _save_config(bundle: Bundle) -> None:
    """The bundle's config file replaced atomically: a reader sees the old weights or the new, never half a file."""
    staging = bundle.path / ".fusion-staging"
    staging.mkdir(exist_ok=True)
    bundle.config.save(staging)
    (staging / CONFIG_NAME).replace(bundle.path / CONFIG_NAME)
    staging.rmdir()
