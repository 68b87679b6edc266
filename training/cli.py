"""``mixlm train domain|teacher|joint|fusion|average|pseudo-queries`` and ``mixlm eval``: thin commands
over ``mixlm.training``.

Heavy imports happen inside the commands, so ``--help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import click

from mixlm.encoders.config import CONFIG_NAME, LoraConfig, RankerInputs
from mixlm.errors import user_errors
from mixlm.options import bundle_option
from mixlm.output import columns_table, echo_err, key_value_table, output_option, render
from mixlm.ranker.defaults import DEFAULT_TRUNCATE_TOKENS
from mixlm.training.config import (
    EVAL_METHODS,
    EVAL_RERANK_DEPTH,
    FULLTEXT_TARGETS,
    FULLTEXT_TOKENS,
    PRIOR_SCOPES,
    PRIOR_TEMPERATURES,
    TEXT_RANKER_LORA,
    DataConfig,
    DomainConfig,
    JointConfig,
    LoopConfig,
    TeacherConfig,
)

# The schedule of every stage from the command line; its learning rate and checkpoints differ
# from LoopConfig's library defaults (LoopConfig.steps and .seed are shared).
CLI_LR = 5e-4
CLI_CHECKPOINT_EVERY = 10


def data_options(func):
    """Options every training stage shares: the data, the schedule, the seed."""
    options = [
        click.option("--dataset", "datasets", required=True, multiple=True,
                     type=click.Path(exists=True, file_okay=False),
                     help="a BEIR-layout folder (corpus.jsonl[.gz], queries.jsonl, qrels/<split>.tsv); repeat it "
                          "to train on several collections together"),
        click.option("--split", default=DataConfig.split, show_default=True,
                     help="judgments to train on: train or dev (a test split is refused)"),
        click.option("--bm25-depth", type=click.IntRange(min=1), default=DataConfig.bm25_depth, show_default=True,
                     help="hard negatives come from each query's BM25 top-K"),
        click.option("--group-size", type=click.IntRange(min=2), default=DataConfig.group_size, show_default=True,
                     help="candidates per query per step (judged positives + BM25 negatives)"),
        click.option("--queries-per-step", type=click.IntRange(min=1), default=DataConfig.queries_per_step,
                     show_default=True),
        click.option("--max-queries", type=click.IntRange(min=1), default=None,
                     help="train on the first N judged queries only"),
        click.option("--holdout-every", type=click.IntRange(min=0), default=DataConfig.holdout_every, show_default=True,
                     help="every N-th query (by a hash of its id) is held out as dev, never trained on; the "
                          "joint stage fits the fusion weights there (0: none)"),
        click.option("--steps", type=click.IntRange(min=1), default=LoopConfig.steps, show_default=True),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=CLI_LR, show_default=True,
                     help="peak learning rate of the adapters (warmup, then cosine decay)"),
        click.option("--checkpoint-every", type=click.IntRange(min=1), default=CLI_CHECKPOINT_EVERY, show_default=True),
        click.option("--seed", type=int, default=LoopConfig.seed, show_default=True),
        click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
                     help="run directory: config, metrics, checkpoint, bundle/ (an existing one resumes)"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _data_and_loop(datasets, split, bm25_depth, group_size, queries_per_step, max_queries, holdout_every, steps, lr,
                   checkpoint_every, seed):
    data = DataConfig(datasets=tuple(str(Path(d).resolve()) for d in datasets), split=split, bm25_depth=bm25_depth,
                      group_size=group_size, queries_per_step=queries_per_step, max_queries=max_queries,
                      holdout_every=holdout_every or None)
    return data, _loop(steps, lr, checkpoint_every, seed)


def _loop(steps, lr, checkpoint_every, seed):
    """The schedule from the command line: a tenth of the steps (at most 10) of warmup, about 20 log lines."""
    return LoopConfig(steps=steps, lr=lr, warmup_steps=min(10, max(1, steps // 10)),
                      checkpoint_every=checkpoint_every, log_every=max(1, min(5, steps // 20)), seed=seed)


@click.group()
def train() -> None:
    """Train the paired encoder and ranker: domain (stage 1, optional), teacher (2), joint (3)."""


@train.command()
@bundle_option(help="the bundle whose ranker becomes the teacher (mixlm bundle init ...)")
@data_options
@click.option("--max-item-tokens", type=click.IntRange(min=1), default=FULLTEXT_TOKENS, show_default=True,
              help="item text tokens the teacher reads (the beginning of longer items)")
@click.option("--lora-rank", type=click.IntRange(min=1), default=TEXT_RANKER_LORA.rank, show_default=True)
@click.option("--lora-layers", type=click.IntRange(min=1), default=TEXT_RANKER_LORA.top_layers, show_default=True,
              help="adapt the ranker's last N transformer blocks")
@user_errors
def teacher(bundle_dir, datasets, split, bm25_depth, group_size, queries_per_step, max_queries, holdout_every, steps,
            lr, checkpoint_every, seed, run_dir, max_item_tokens, lora_rank, lora_layers) -> None:
    """Stage 2: fine-tune the ranker on (query, full item text) with KL(p* || p); prints the teacher bundle."""
    from mixlm.training.teacher import train_teacher

    data, loop = _data_and_loop(datasets, split, bm25_depth, group_size, queries_per_step, max_queries,
                                holdout_every, steps, lr, checkpoint_every, seed)
    config = TeacherConfig(data, loop, LoraConfig(rank=lora_rank, alpha=2.0 * lora_rank, top_layers=lora_layers),
                           max_item_tokens)
    click.echo(str(train_teacher(bundle_dir, run_dir, config, log=echo_err).path))


@train.command()
@bundle_option(help="the bundle whose ranker adapts to the corpus")
@click.option("--dataset", required=True, type=click.Path(exists=True, file_okay=False),
              help="a BEIR-layout folder; only its corpus is read")
@click.option("--steps", type=click.IntRange(min=1), default=LoopConfig.steps, show_default=True)
@click.option("--docs-per-step", type=click.IntRange(min=1), default=DomainConfig.docs_per_step, show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=2), default=DomainConfig.max_tokens, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=CLI_LR, show_default=True)
@click.option("--lora-rank", type=click.IntRange(min=1), default=DomainConfig.ranker_lora.rank, show_default=True)
@click.option("--lora-layers", type=click.IntRange(min=1), default=DomainConfig.ranker_lora.top_layers,
              show_default=True)
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=CLI_CHECKPOINT_EVERY, show_default=True)
@click.option("--seed", type=int, default=LoopConfig.seed, show_default=True)
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="run directory (an existing one resumes)")
@user_errors
def domain(bundle_dir, dataset, steps, docs_per_step, max_tokens, lr, lora_rank, lora_layers, checkpoint_every, seed,
           run_dir) -> None:
    """Stage 1 (optional): adapt the ranker LM to the corpus text; the teacher stage continues its adapter."""
    from mixlm.training.domain import train_domain

    config = DomainConfig(str(Path(dataset).resolve()), _loop(steps, lr, checkpoint_every, seed),
                          LoraConfig(rank=lora_rank, alpha=2.0 * lora_rank, top_layers=lora_layers),
                          docs_per_step, max_tokens)
    click.echo(str(train_domain(bundle_dir, run_dir, config, log=echo_err).path))


@train.command()
@click.option("--teacher", "teacher_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="the teacher bundle ('mixlm train teacher' writes RUN/bundle)")
@data_options
@click.option("--n-tokens", type=click.IntRange(min=1), default=JointConfig.n_tokens, show_default=True,
              help="embedding tokens per item (T_S)")
@click.option("--projection", type=click.Choice(["linear", "mlp"]), default=JointConfig.projection, show_default=True)
@click.option("--encoder-max-length", type=click.IntRange(min=2), default=None,
              help="item tokens the encoder reads  [default: the teacher bundle's]")
@click.option("--encoder-lora-layers", type=click.IntRange(min=0), default=0, show_default=True,
              help="adapt the encoder's last N blocks (0: the encoder stays frozen and runs once per text)")
@click.option("--lora-rank", type=click.IntRange(min=1), default=JointConfig.ranker_lora.rank, show_default=True,
              help="rank of the ranker's fresh adapter (on every block)")
@click.option("--query-vector/--no-query-vector", default=JointConfig.inputs.query_vector, show_default=True,
              help="the query's own embedding tokens close the ranker's prefix")
@click.option("--interaction/--no-interaction", default=JointConfig.inputs.interaction, show_default=True,
              help="each item token also carries the projected query*item retrieval-vector product")
@click.option("--max-item-tokens", type=click.IntRange(min=1), default=JointConfig.max_item_tokens, show_default=True,
              help="full item text tokens for the teacher and alignment targets")
@click.option("--teacher-negatives", type=click.IntRange(min=0), default=JointConfig.teacher_negatives,
              show_default=True,
              help="per query, the hardest negatives that get teacher targets (with its judged documents)")
@click.option("--dense-depth", type=click.IntRange(min=1), default=JointConfig.dense_depth, show_default=True,
              help="hard negatives also come from the encoder's own top-K")
@click.option("--fulltext-targets", type=click.Choice(FULLTEXT_TARGETS), default=JointConfig.fulltext_targets,
              show_default=True,
              help="same-ranker full-text targets: recomputed each step (live) or the teacher's")
@click.option("--phase1-fraction", type=click.FloatRange(0, 1), default=JointConfig.phase1_fraction, show_default=True,
              help="share of steps in the alignment-heavy first phase of the curriculum")
@click.option("--distill-weight", type=click.FloatRange(min=0), default=JointConfig.phase2.distill, show_default=True,
              help="λ_d: weight of the teacher's full-text scores after the first phase")
@click.option("--encoder-prior-weight", type=click.FloatRange(min=0), default=JointConfig.phase2.encoder_prior,
              show_default=True,
              help="λ_e: weight of the first stages' order over each group, a soft listwise target")
@click.option("--encoder-prior-source", type=click.Choice(list(PRIOR_TEMPERATURES)),
              default=JointConfig.phase2.encoder_prior_source, show_default=True,
              help="the order λ_e follows: the encoder's cosines, their z-score fusion with BM25's scores, or "
                   "the MaxSim of the encoder's token states (training only)")
@click.option("--encoder-prior-temperature", type=click.FloatRange(min=0, min_open=True), default=None,
              help="τ of λ_e's softmax  [default: 0.05 for dense cosines, 0.5 for bm25+dense z-scores, 0.03 for "
                   "maxsim]")
@click.option("--encoder-prior-scope", type=click.Choice(PRIOR_SCOPES), default=JointConfig.phase2.encoder_prior_scope,
              show_default=True,
              help="the candidates λ_e orders: the whole group, or only those the labels call irrelevant (the "
                   "labels alone then place the relevant ones)")
@click.option("--residual-weight", type=click.FloatRange(min=0), default=JointConfig.phase2.residual_listwise,
              show_default=True,
              help="λ_f: weight of a listwise term on the log-odds plus the BM25+dense z-scores of each group, "
                   "which trains the student for the final score")
@click.option("--ema-decay", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="> 0: the bundle gets the exponential moving average of the weights over the steps (0: the last)")
@click.option("--start-from", type=click.Path(exists=True, file_okay=False), default=None,
              help="continue from a trained MixLM bundle (its ranker adapter and interaction) instead of a fresh "
                   "student; its projection stays frozen, so the result reads the same store records")
@user_errors
def joint(teacher_dir, datasets, split, bm25_depth, group_size, queries_per_step, max_queries, holdout_every, steps,
          lr, checkpoint_every, seed, run_dir, n_tokens, projection, encoder_max_length, encoder_lora_layers, lora_rank,
          query_vector, interaction, max_item_tokens, teacher_negatives, dense_depth, fulltext_targets,
          phase1_fraction, distill_weight, encoder_prior_weight, encoder_prior_source,
          encoder_prior_temperature, encoder_prior_scope, residual_weight, ema_decay, start_from) -> None:
    """Stage 3: train projection and ranker (and optionally the encoder) on mixed inputs, with distillation
    and self-alignment on the pairs the teacher scored; fits the final score's fusion on held-out queries.

    Prints the MixLM bundle, which the pipelines and the ranker client load as is.
    """
    import dataclasses

    from mixlm.training.joint import train_joint

    data, loop = _data_and_loop(datasets, split, bm25_depth, group_size, queries_per_step, max_queries,
                                holdout_every, steps, lr, checkpoint_every, seed)
    loop = dataclasses.replace(loop, ema_decay=ema_decay)
    encoder_lora = LoraConfig(rank=16, alpha=32.0, top_layers=encoder_lora_layers) if encoder_lora_layers else None
    config = JointConfig(data, loop, n_tokens=n_tokens, projection=projection, encoder_max_length=encoder_max_length,
                         encoder_lora=encoder_lora, ranker_lora=LoraConfig(rank=lora_rank, alpha=2.0 * lora_rank),
                         inputs=RankerInputs(query_vector=query_vector, interaction=interaction),
                         max_item_tokens=max_item_tokens, teacher_negatives=teacher_negatives,
                         dense_depth=dense_depth, fulltext_targets=fulltext_targets, phase1_fraction=phase1_fraction,
                         phase2=dataclasses.replace(JointConfig.phase2, distill=distill_weight,
                                                    encoder_prior=encoder_prior_weight,
                                                    encoder_prior_source=encoder_prior_source,
                                                    encoder_prior_temperature=encoder_prior_temperature
                                                    or PRIOR_TEMPERATURES[encoder_prior_source],
                                                    encoder_prior_scope=encoder_prior_scope,
                                                    residual_listwise=residual_weight),
                         start_from=str(Path(start_from).resolve()) if start_from else None)
    click.echo(str(train_joint(teacher_dir, run_dir, config, log=echo_err).path))


@train.command()
@bundle_option(help="the trained MixLM bundle whose fusion weights are refitted (its config is rewritten)")
@click.option("--dataset", "datasets", required=True, multiple=True, type=click.Path(exists=True, file_okay=False),
              help="a collection the bundle was trained on, for its dev queries (repeatable)")
@click.option("--held-out", "held_out", multiple=True, metavar="STUDENT=DATASET",
              help="a student bundle trained without DATASET: its scores on DATASET's dev queries stand for a "
                   "collection nobody trained on (repeatable)")
@click.option("--split", default=DataConfig.split, show_default=True, help="judgments the dev queries come from")
@click.option("--holdout-every", type=click.IntRange(min=2), default=DataConfig.holdout_every, show_default=True,
              help="the dev queries: every N-th query by a hash of its id, as in training")
@click.option("--rerank-depth", type=click.IntRange(min=1), default=EVAL_RERANK_DEPTH, show_default=True,
              help="each dev query's BM25 top-K is reranked")
@output_option()
@user_errors
def fusion(bundle_dir, datasets, held_out, split, holdout_every, rerank_depth, output) -> None:
    """Refit the final score's fusion weights so that they hold on collections nobody trained on.

    The weights with the largest smallest gain over each case's best first stage win: every
    --dataset's dev queries scored by the bundle, and every --held-out DATASET's scored by a
    student that never saw it. MixLM's log-odds are divided by a scale fitted beside the weights
    (their typical spread over a query's candidates on the --dataset dev queries); a held-out
    student brings its own, so its fusion must have been fitted first.
    """
    from mixlm.training.fusion_stage import refit_fusion

    pairs = []
    for spec in held_out:
        student, sep, dataset = spec.partition("=")
        if not sep or not Path(student).is_dir() or not Path(dataset).is_dir():
            raise click.BadParameter(f"{spec!r}: expected STUDENT=DATASET, two existing folders",
                                     param_hint="--held-out")
        pairs.append((student, dataset))
    data = DataConfig(datasets=tuple(str(Path(d).resolve()) for d in datasets), split=split,
                      holdout_every=holdout_every)
    report = refit_fusion(bundle_dir, data, pairs, depth=rerank_depth, log=echo_err)
    rows = [{"case": name, **case["first_stages"], "mixlm": case["mixlm"], "final": case["final"]}
            for name, case in report["cases"].items()]
    table = (columns_table(rows, ("case", "bm25", "dense", "bm25+dense", "mixlm", "final"))
             + f"\nfusion: mixlm 1 (log-odds / {report['fusion']['mixlm_scale']}), "
             + f"first_stage {report['fusion']['first_stage']}, dense {report['fusion']['dense']}"
             + f"; smallest gain over a case's best first stage {report['worst_gain']:+.4f}")
    click.echo(render(report, output, table))  # the JSON keeps every grid point's NDCG@10 per case


@train.command()
@click.option("--bundle", "bundle_dirs", required=True, multiple=True, type=click.Path(exists=True, file_okay=False),
              help="a trained MixLM bundle to average (repeat: at least two, with one encoder_id and adapter shape)")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="the averaged bundle (replaced if it exists and is a bundle)")
@output_option()
@user_errors
def average(bundle_dirs, out_dir, output) -> None:
    """Average trained bundles' rankers into one bundle: runs of one recipe with other seeds, at the
    cost of one ranker.

    Each adapter's weight change is averaged and stored at the adapters' rank; the interaction
    matrices are averaged. The result has no fusion weights: fit them with `mixlm train fusion`.
    """
    from mixlm.training.averaging import average_bundles

    if out_dir.exists() and not (out_dir / CONFIG_NAME).is_file():
        raise click.BadParameter(f"{out_dir} exists and is not a bundle; refusing to replace it", param_hint="--out")
    bundle, kept = average_bundles(bundle_dirs, out_dir, log=echo_err)
    report = {"bundle": str(bundle.path), "averaged": [str(Path(d)) for d in bundle_dirs],
              "encoder_id": bundle.encoder_id, "adapter_change_kept": round(kept, 6)}
    click.echo(render(report, output, key_value_table(report)))


@train.command("pseudo-queries")
@click.option("--corpus", "corpus_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="a BEIR-layout folder with corpus.jsonl[.gz] and no test judgments")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="new folder for the pseudo-query collection (BEIR layout, qrels/train.tsv)")
@click.option("--max-queries", type=click.IntRange(min=1), default=None, help="keep at most N pairs")
@click.option("--seed", type=int, default=0, show_default=True)
@output_option()
@user_errors
def pseudo_queries(corpus_dir, out_dir, max_queries, seed, output) -> None:
    """Make training queries from a corpus that has none: a title for its text, or a sentence for the rest.

    The result is a BEIR folder any stage trains on with --dataset. A corpus that a test
    collection judges (qrels/test*.tsv) is refused.
    """
    from mixlm.training.pseudo_queries import write_pseudo_queries

    summary = write_pseudo_queries(corpus_dir, out_dir, max_queries=max_queries, seed=seed)
    click.echo(render(summary, output, key_value_table(summary)))


@click.command(name="eval")
@click.option("--dataset", required=True, type=click.Path(exists=True, file_okay=False),
              help="a BEIR-layout folder")
@click.option("--split", default="test", show_default=True)
@bundle_option(help="the MixLM bundle (encoder vectors + ranker)")
@click.option("--teacher", "teacher_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="bundle whose ranker reads text for the full-text and truncated rows  [default: --bundle]")
@click.option("--rerank-depth", type=click.IntRange(min=1), default=EVAL_RERANK_DEPTH, show_default=True,
              help="every method reranks each query's BM25 top-K")
@click.option("--max-queries", type=click.IntRange(min=1), default=None,
              help="the first N judged queries only (the text rankers are slow on a CPU)")
@click.option("--methods", default=",".join(EVAL_METHODS), show_default=True,
              help="comma-separated subset (random: the mean of 20 seeded random orderings; final: MixLM fused "
                   "with BM25's scores by the bundle's fusion weights)")
@click.option("--fulltext-tokens", type=click.IntRange(min=1), default=FULLTEXT_TOKENS, show_default=True,
              help="item tokens the full-text ranker reads")
@click.option("--truncate-tokens", type=click.IntRange(min=1), default=DEFAULT_TRUNCATE_TOKENS, show_default=True,
              help="item tokens the truncated-text ranker reads")
@click.option("--save-runs", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="also write every method's scored candidates (TREC run format) to this file")
@output_option()
@user_errors
def evaluate(dataset, split, bundle_dir, teacher_dir, rerank_depth, max_queries, methods, fulltext_tokens,
             truncate_tokens, save_runs, output) -> None:
    """NDCG@10 (pytrec_eval) of BM25, dense retrieval vectors, text rankers, MixLM and the final score on one split."""
    from mixlm.training.rerank_eval import evaluate as run_evaluation

    report = run_evaluation(dataset, split, bundle_dir, teacher_dir=teacher_dir,
                            methods=[m.strip() for m in methods.split(",") if m.strip()], depth=rerank_depth,
                            max_queries=max_queries, fulltext_tokens=fulltext_tokens,
                            truncate_tokens=truncate_tokens, log=echo_err)
    runs = report.pop("runs")
    if save_runs:
        _write_trec_runs(save_runs, runs)
    rows = [{"method": name, **values} for name, values in report["results"].items()]
    table = (f"{report['dataset']}/{report['split']}: {report['queries']} queries, reranking BM25 "
             f"top-{report['rerank_depth']}\n" + columns_table(rows, ("method", "ndcg@10", "seconds")))
    click.echo(render(report, output, table))


def _write_trec_runs(path: Path, runs: dict) -> None:
    lines = []
    for method, run in runs.items():
        for qid, scores in run.items():
            ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
            lines += [f"{qid} Q0 {doc} {rank} {score:.6f} {method}" for rank, (doc, score) in enumerate(ranked, 1)]
    path.write_text("\n".join(lines) + "\n")
