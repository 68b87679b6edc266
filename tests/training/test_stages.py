"""The training stages for real on a tiny bundle: losses fall, the student moves toward the teacher,
a test split is refused, and a trained bundle loads in the ranker client with the scores it trained to."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mixlm.encoders import ItemEncoder
from mixlm.encoders.bundle import load_bundle
from mixlm.encoders.config import LoraConfig
from mixlm.ranker.client import RankerClient
from mixlm.ranker.model import MixedInputRanker
from mixlm.ranker.text_baselines import FullTextRanker
from mixlm.schemas import ItemEvent
from mixlm.schemas.errors import InputError
from mixlm.store import EmbeddingStore
from mixlm.training.averaging import average_bundles
from mixlm.training.candidates import Group
from mixlm.training.config import PRIOR_TEMPERATURES, JointConfig, LoopConfig, LossWeights
from mixlm.training.evaluation import SplitLeakError
from mixlm.training.joint import train_joint
from mixlm.training.losses import bernoulli_kl, mixlm_loss
from mixlm.training.stages import training_data, training_sampler
from mixlm.training.teacher import train_teacher

from .conftest import small_data, teacher_config

QUIET = {"log": lambda line: None}


@pytest.fixture(scope="module")
def groups():
    dataset, sampler = training_sampler(small_data(), 0, lambda line: None)
    return dataset, [g for step in range(3) for g in sampler.groups(step, 2)]


def _fulltext_log_odds(bundle_dir, dataset, group):
    bundle = load_bundle(bundle_dir)
    ranker = FullTextRanker(MixedInputRanker.from_bundle(bundle), max_item_tokens=48)
    texts = [bundle.config.encoding.format_item(dataset.corpus[d].title, dataset.corpus[d].text)
             for d in group.doc_ids]
    return torch.tensor(ranker.score(dataset.queries[group.query_id], texts).log_odds)


def _task_loss(bundle_dir, groups):
    dataset, chosen = groups
    return np.mean([bernoulli_kl(torch.tensor(g.labels), _fulltext_log_odds(bundle_dir, dataset, g)).item()
                    for g in chosen])


def test_teacher_steps_lower_the_task_loss(base_bundle, teacher_bundle, groups):
    assert _task_loss(teacher_bundle, groups) < _task_loss(base_bundle, groups) - 0.05


def test_a_test_split_is_refused_before_any_training(base_bundle, tmp_path):
    with pytest.raises(SplitLeakError, match="cannot be used for training"):
        train_teacher(base_bundle, tmp_path / "leak", teacher_config(split="test"), **QUIET)
    assert not (tmp_path / "leak" / "checkpoint").exists()


def _joint(teacher_bundle, run_dir, *, steps, lr, n_tokens=1, encoder_lora=None, weights=None, start_from=None,
           lora_rank=4, teacher_negatives=2, seed=0, log=None):
    """Distillation and alignment only by default (task weights 0): the tiny teacher fits its labels
    poorly, and the task terms would pull the student toward the labels rather than toward the teacher."""
    weights = weights or LossWeights(task=0.0, listwise=0.0, distill=1.0, align=1.0, align_kl=1.0, align_cos=1.0)
    config = JointConfig(small_data(max_queries=12, group_size=4), LoopConfig(
                             steps=steps, lr=lr, warmup_steps=1, checkpoint_every=steps, log_every=steps,
                             seed=seed),
                         n_tokens=n_tokens, encoder_lora=encoder_lora,
                         ranker_lora=LoraConfig(rank=lora_rank, alpha=2.0 * lora_rank), max_item_tokens=48,
                         teacher_negatives=teacher_negatives, dense_depth=10, phase1=weights, phase2=weights,
                         start_from=str(start_from) if start_from else None)
    return train_joint(teacher_bundle, run_dir, config, log=log or QUIET["log"]).path


def _student_scores(bundle_dir, dataset, group):
    """MixLM's log-odds for a group, the way a client computes them (query vectors, retrieval vectors)."""
    encoder, ranker = ItemEncoder.from_bundle(bundle_dir), MixedInputRanker.from_bundle(bundle_dir)
    items = encoder.encode([(dataset.corpus[d].title, dataset.corpus[d].text) for d in group.doc_ids])
    query = encoder.encode_queries([dataset.queries[group.query_id]])[0]
    return torch.tensor(ranker.score(dataset.queries[group.query_id], [i.vectors for i in items],
                                     query_embedding=query,
                                     item_retrieval=np.stack([i.retrieval_vector for i in items])).log_odds)


@pytest.fixture(scope="module")
def teacher_pairs(teacher_bundle, tmp_path_factory):
    """The (query, document) pairs the joint stage's teacher targets cover: judged docs + 2 hardest negatives."""
    from mixlm.training.joint import TARGETS_FILE, TeacherTargets

    run = tmp_path_factory.mktemp("joint") / "targets-only"
    _joint(teacher_bundle, run, steps=1, lr=1e-9)
    dataset, _ = training_data(small_data(max_queries=12, group_size=4), lambda line: None)
    assert (run / TARGETS_FILE).is_file()  # distillation reads them, so they were computed
    targets = TeacherTargets(run / TARGETS_FILE)
    pairs = {}
    for key in targets.index:
        qid, doc = key.split("\t")
        pairs.setdefault(qid, []).append(doc)
    return dataset, [Group(q, tuple(docs), (0.0,) * len(docs)) for q, docs in sorted(pairs.items())]


def test_cached_teacher_targets_are_extended_with_only_the_pairs_they_lack(teacher_bundle, tmp_path):
    """A run with more teacher negatives than the targets it starts with computes just the new pairs,
    and ends with the targets a run computing them all from scratch has."""
    from mixlm.training.joint import TARGETS_FILE, TeacherTargets

    def targets(name, negatives, start=None, log=None):
        if start:
            (tmp_path / name).mkdir()
            (tmp_path / name / TARGETS_FILE).write_bytes((tmp_path / start / TARGETS_FILE).read_bytes())
        _joint(teacher_bundle, tmp_path / name, steps=1, lr=1e-9, teacher_negatives=negatives, log=log)
        return TeacherTargets(tmp_path / name / TARGETS_FILE)

    narrow, scratch = targets("one", 1), targets("scratch", 2)
    lines = []
    extended = targets("extended", 2, start="one", log=lines.append)
    assert 0 < len(narrow.index) < len(scratch.index)
    assert f"({len(scratch.index) - len(narrow.index)} full-text pairs)" in "\n".join(lines)
    assert set(extended.index) == set(scratch.index)
    for key, row in scratch.index.items():
        torch.testing.assert_close(extended.log_odds[extended.index[key]], scratch.log_odds[row],
                                   atol=1e-4, rtol=1e-4)


def _distance_to_teacher(student, teacher, pairs):
    dataset, chosen = pairs
    return np.mean([bernoulli_kl(torch.sigmoid(_fulltext_log_odds(teacher, dataset, g)),
                                 _student_scores(student, dataset, g)).item() for g in chosen])


@pytest.fixture(scope="module")
def student(teacher_bundle, tmp_path_factory):
    return _joint(teacher_bundle, tmp_path_factory.mktemp("joint") / "trained", steps=40, lr=1e-2)


def test_joint_training_moves_mixed_scores_toward_the_teacher(teacher_bundle, student, teacher_pairs, tmp_path):
    untrained = _joint(teacher_bundle, tmp_path / "untrained", steps=1, lr=1e-9)
    assert _distance_to_teacher(student, teacher_bundle, teacher_pairs) < 0.5 * _distance_to_teacher(
        untrained, teacher_bundle, teacher_pairs)


def test_gold_labels_alone_teach_the_student_to_rank(teacher_bundle, tmp_path):
    """Listwise + pointwise on gold labels, no teacher: the trained student ranks the training groups'
    judged documents above their negatives far more often than the untrained one, and no teacher pass
    ran for targets no loss term reads."""
    from mixlm.training.joint import TARGETS_FILE

    gold = LossWeights(task=0.5, listwise=1.0, distill=0.0, align=0.0)
    dataset, sampler = training_sampler(small_data(max_queries=12, group_size=4), 0, lambda line: None)
    chosen = [g for step in range(4) for g in sampler.groups(step, 3)]

    def positive_rank_accuracy(bundle_dir):
        hits = []
        for group in chosen:
            scores = _student_scores(bundle_dir, dataset, group).numpy()
            labels = np.array(group.labels)
            hits += [float(p > n) for p in scores[labels > 0] for n in scores[labels == 0]]
        return np.mean(hits)

    trained = _joint(teacher_bundle, tmp_path / "gold", steps=120, lr=1e-2, weights=gold)
    untrained = _joint(teacher_bundle, tmp_path / "untrained", steps=1, lr=1e-9, weights=gold)
    assert positive_rank_accuracy(trained) > positive_rank_accuracy(untrained) + 0.15
    assert not (tmp_path / "gold" / TARGETS_FILE).exists()


def _maxsim_by_hand(encoder: ItemEncoder, query: str, document: str) -> torch.Tensor:
    """Mean over the query's tokens of the best cosine with a document token, from the encoder's own outputs."""
    states = []
    for text in (query, document):
        ids = torch.tensor([encoder.tokenizer([text])[0].ids])
        with torch.no_grad():
            states.append(torch.nn.functional.normalize(encoder.model(input_ids=ids).last_hidden_state[0].float(),
                                                        dim=-1))
    return (states[0] @ states[1].T).max(dim=1).values.mean()


@pytest.mark.parametrize(("source", "term"), [(source, "encoder_prior") for source in PRIOR_TEMPERATURES]
                         + [("bm25+dense", "residual_listwise")])
def test_the_prior_reads_each_candidate_s_own_first_stage_scores(teacher_bundle, tmp_path, monkeypatch, source,
                                                                  term):
    """The joint stage hands the loss the scores a client would compute for the same group (rows in
    the group's order): the cosines, or their z-scores plus BM25's over the training corpus, or the
    MaxSim of the encoder's token states, for the prior, and the z-scores for the residual term;
    and the term's part shows in the run's metrics."""
    import mixlm.training.joint as joint
    from mixlm.ranker.fusion import standardise
    from mixlm.training.candidates import GroupSampler, bm25_index

    seen, sampled = [], []
    draw = GroupSampler.groups

    def recording_groups(self, step, count):
        sampled.extend(groups := draw(self, step, count))
        return groups

    def recording_loss(labels, log_odds, **kwargs):
        seen.append(kwargs["prior_scores" if term == "encoder_prior" else "first_stage_scores"].detach().clone())
        return mixlm_loss(labels, log_odds, **kwargs)

    monkeypatch.setattr(GroupSampler, "groups", recording_groups)
    monkeypatch.setattr(joint, "mixlm_loss", recording_loss)
    prior = LossWeights(task=0.0, listwise=0.0, distill=0.0, align=0.0, **(
        {"encoder_prior": 1.0, "encoder_prior_source": source, "encoder_prior_temperature": PRIOR_TEMPERATURES[source]}
        if term == "encoder_prior" else {"residual_listwise": 1.0}))
    run = tmp_path / "prior"
    bundle = _joint(teacher_bundle, run, steps=1, lr=1e-3, weights=prior)
    dataset, _ = training_data(small_data(max_queries=12, group_size=4), lambda line: None)
    encoder = ItemEncoder.from_bundle(bundle)
    lexical = bm25_index(dataset)
    assert len(sampled) == len(seen) == 2  # one step of two queries
    for group, scores in zip(sampled, seen, strict=True):
        items = encoder.encode([(dataset.corpus[d].title, dataset.corpus[d].text) for d in group.doc_ids])
        query = encoder.encode_queries([dataset.queries[group.query_id]])[0]
        expected = torch.cosine_similarity(torch.tensor(np.stack([i.retrieval_vector for i in items])),
                                           torch.tensor(query.retrieval_vector)[None])
        if source == "bm25+dense":
            bm25 = lexical.scores(dataset.queries[group.query_id], group.doc_ids)
            assert bm25.std() > 0  # the lexical part varies, so the check below can tell it is there
            expected = torch.from_numpy(standardise(bm25) + standardise(expected.numpy())).float()
        if source == "maxsim":
            expected = torch.stack([_maxsim_by_hand(encoder, dataset.queries[group.query_id],
                                                    encoder.encoding.format_item(dataset.corpus[d].title,
                                                                                 dataset.corpus[d].text))
                                    for d in group.doc_ids])
            assert expected.std() > 0  # candidates differ, so the rows' order is checked too
        assert torch.allclose(scores.float(), expected, atol=1e-3)
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])[term] > 0


def test_the_student_bundle_records_its_settings_and_stays_small(student, teacher_bundle):
    bundle = load_bundle(student)
    bundle.check_encoder_id()
    assert bundle.encoder_id != load_bundle(teacher_bundle).encoder_id
    assert sorted(p.name for p in bundle.ranker_dir.iterdir()) == ["adapter.json", "adapter.safetensors", "base.json",
                                                                   "interaction.safetensors"]
    assert (bundle.config.inputs.query_vector, bundle.config.inputs.interaction) == (True, True)
    assert bundle.config.fusion is not None and "dev" in bundle.config.fusion.fitted_on
    assert bundle.config.fusion.mixlm_scale > 0  # the student's log-odds spread on those dev queries
    assert bundle.config.prompt.end == " Relevant"  # one token for SmolLM2 (checked on the shipped bundle)


def test_a_trainable_encoder_and_several_embedding_tokens_train_and_load(teacher_bundle, tmp_path):
    bundle = load_bundle(_joint(teacher_bundle, tmp_path / "ts3", steps=2, lr=1e-3, n_tokens=3,
                                encoder_lora=LoraConfig(rank=4, alpha=8.0, top_layers=1)))
    assert (bundle.config.encoding.n_tokens, bundle.config.encoding.pooling) == (3, "last_k")
    assert sorted(p.name for p in bundle.encoder_dir.iterdir()) == ["adapter.json", "adapter.safetensors", "base.json"]
    assert "dev" in bundle.config.fusion.fitted_on  # its dev queries were scored with the trained encoder
    item = ItemEncoder.from_bundle(bundle).encode([("A title", "some text here")])[0]
    assert item.vectors.shape == (3, bundle.config.ranker.hidden_size)


def test_a_run_started_from_a_trained_bundle_continues_it_and_keeps_its_store_records(student, teacher_bundle,
                                                                                      teacher_pairs, tmp_path):
    """Its first step starts where the trained student ended (same scores at a vanishing learning rate),
    training moves the ranker, and the projection stays as it was: the encoder_id, and so the store's
    records, are the start bundle's."""
    dataset, chosen = teacher_pairs
    still = _joint(teacher_bundle, tmp_path / "still", steps=1, lr=1e-9, start_from=student)
    moved = _joint(teacher_bundle, tmp_path / "moved", steps=6, lr=1e-2, start_from=student)
    fresh = _joint(teacher_bundle, tmp_path / "fresh", steps=1, lr=1e-9)
    for group in chosen[:3]:
        start_scores = _student_scores(student, dataset, group)
        assert torch.allclose(_student_scores(still, dataset, group), start_scores, atol=1e-3)
        assert not torch.allclose(_student_scores(fresh, dataset, group), start_scores, atol=1e-3)
    start = load_bundle(student)
    for bundle in map(load_bundle, (still, moved)):
        assert bundle.encoder_id == start.encoder_id
        assert bundle.projection_file.read_bytes() == start.projection_file.read_bytes()
    assert (load_bundle(moved).ranker_dir / "adapter.safetensors").read_bytes() != (
        start.ranker_dir / "adapter.safetensors").read_bytes()


def test_a_start_bundle_that_does_not_fit_the_run_is_refused_before_training(student, teacher_bundle, tmp_path):
    with pytest.raises(InputError, match="its ranker adapter is"):
        _joint(teacher_bundle, tmp_path / "rank", steps=1, lr=1e-3, start_from=student, lora_rank=8)
    with pytest.raises(InputError, match="its settings differ from this run.s in encoding"):
        _joint(teacher_bundle, tmp_path / "tokens", steps=1, lr=1e-3, start_from=student, n_tokens=2)
    with pytest.raises(InputError, match="cannot train an encoder adapter"):
        _joint(teacher_bundle, tmp_path / "encoder", steps=1, lr=1e-3, start_from=student,
               encoder_lora=LoraConfig(rank=4, alpha=8.0, top_layers=1))
    assert not any((tmp_path / name).exists() for name in ("rank", "tokens", "encoder"))


def test_a_trained_bundle_round_trips_into_the_ranker_client(student, teacher_pairs, tmp_path):
    dataset, chosen = teacher_pairs
    group = chosen[0]
    bundle = load_bundle(student)
    encoder = ItemEncoder.from_bundle(bundle)
    events = [ItemEvent(d, "upsert", 1, dataset.corpus[d].title, dataset.corpus[d].text) for d in group.doc_ids]
    store = EmbeddingStore.open(tmp_path / "store", create=True)
    store.put_many(encoder.encode_events(events))
    served = RankerClient.open(student, tmp_path / "store").score(dataset.queries[group.query_id], group.doc_ids)

    # the models as training held them: adapters separate, not merged into the weights
    unmerged_encoder = ItemEncoder(bundle.load_encoder("cpu", merge_adapter=False), bundle.encoder_tokenizer,
                                   bundle.config.encoding, bundle.encoder_id, projection=bundle.load_projection())
    unmerged_ranker = MixedInputRanker(bundle.load_ranker("cpu", merge_adapter=False), bundle.ranker_tokenizer,
                                       bundle.config.prompt, bundle.encoder_id, inputs=bundle.config.inputs,
                                       interaction=bundle.load_interaction())
    items = unmerged_encoder.encode([(e.title, e.text) for e in events])
    direct = unmerged_ranker.score(dataset.queries[group.query_id], [i.vectors for i in items],
                                   query_embedding=unmerged_encoder.encode_queries([dataset.queries[group.query_id]])[0],
                                   item_retrieval=np.stack([i.retrieval_vector for i in items])).log_odds
    np.testing.assert_allclose([i.log_odds for i in served.items], direct, atol=1e-4)
    assert [i.item_id for i in served.items] == list(group.doc_ids) and not served.missing


def test_a_finished_run_resumes_without_training_again(base_bundle, teacher_bundle, tmp_path):
    first = train_teacher(base_bundle, tmp_path / "t", teacher_config(steps=2), **QUIET)
    lines = (tmp_path / "t" / "metrics.jsonl").read_text()
    again = train_teacher(base_bundle, tmp_path / "t", teacher_config(steps=2), **QUIET)
    assert (tmp_path / "t" / "metrics.jsonl").read_text() == lines
    assert again.encoder_id == first.encoder_id
    assert (again.ranker_dir / "adapter.safetensors").read_bytes() == (
        first.ranker_dir / "adapter.safetensors").read_bytes()


def test_the_beam_backfill_writes_a_trained_bundle_s_vectors(student, tmp_path):
    from click.testing import CliRunner

    from mixlm.cli import main
    from mixlm.schemas.beir import read_corpus

    from .conftest import SCIFACT

    corpus = SCIFACT.parent / "adi" / "corpus.jsonl.gz"
    result = CliRunner().invoke(main, ["backfill", "--input", str(corpus), "--bundle", str(student),
                                       "--store", str(tmp_path / "store")])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(student)
    docs = list(read_corpus(corpus))
    lookup = EmbeddingStore.open(tmp_path / "store").get_many(bundle.encoder_id, [d.doc_id for d in docs[:3]])
    expected = ItemEncoder.from_bundle(bundle).encode([(d.title, d.text) for d in docs[:3]])
    assert lookup.missing == []
    np.testing.assert_allclose(lookup.vectors, np.stack([e.vectors for e in expected]), atol=1e-4)


def test_an_interrupted_joint_run_resumes_bit_identically(teacher_bundle, tmp_path, monkeypatch):
    from mixlm.training import joint

    def run(run_dir, *, interrupt_at=None):
        calls = {"n": 0}
        real = joint.mixlm_loss

        def counting(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == interrupt_at:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(joint, "mixlm_loss", counting)
        config = JointConfig(small_data(max_queries=12, group_size=4),
                             LoopConfig(steps=4, lr=1e-2, warmup_steps=1, checkpoint_every=2, log_every=1),
                             ranker_lora=LoraConfig(rank=4, alpha=8.0), max_item_tokens=48, teacher_negatives=1,
                             dense_depth=10)
        return train_joint(teacher_bundle, run_dir, config, **QUIET)

    straight = run(tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed", interrupt_at=2 * 2 + 1)  # two groups a step: inside step 3
    resumed = run(tmp_path / "resumed")
    for part in ("ranker/adapter.safetensors", "ranker/interaction.safetensors", "projection.safetensors"):
        assert (straight.path / part).read_bytes() == (resumed.path / part).read_bytes(), part
    assert straight.config.fusion == resumed.config.fusion


def test_the_frozen_encoder_cache_keeps_every_text_on_its_own_row(base_bundle, tmp_path):
    """Texts of mixed lengths are encoded in length-bucketed batches; each row must stay its text's."""
    from mixlm.training.joint import EncodedTexts

    bundle = load_bundle(base_bundle)
    encoder = ItemEncoder(bundle.load_encoder("cpu"), bundle.encoder_tokenizer, bundle.config.encoding, "",
                          token_budget=64)
    texts = {f"doc:{n}": "word " * (1 + (n * 7) % 23) + f"item {n}" for n in range(40)}
    cached = EncodedTexts.build(tmp_path / "encoded.safetensors", encoder, texts, log=lambda line: None)
    keys = list(texts)
    _, retrieval = cached.get(keys)
    one_by_one = [ItemEncoder(encoder.model, bundle.encoder_tokenizer, bundle.config.encoding, "").forward(
        encoder.tokenizer([texts[k]]), project=False)[1][0] for k in keys]
    np.testing.assert_allclose(retrieval.numpy(), torch.stack(one_by_one).detach().numpy(), atol=1e-5)
    again = EncodedTexts.build(tmp_path / "encoded.safetensors", encoder, texts, log=lambda line: None)
    assert torch.equal(again.retrieval, cached.retrieval)  # read back from the run, not recomputed
    lines = []
    part = EncodedTexts.build(tmp_path / "encoded.safetensors", encoder, {k: texts[k] for k in keys[::-3]},
                              log=lines.append)
    assert not lines and torch.equal(part.get(keys[::-3])[1], cached.get(keys[::-3])[1])  # a larger cache serves


def test_a_cache_torn_by_a_kill_is_rebuilt_not_a_crash(base_bundle, tmp_path):
    """A run killed while writing its encoder cache leaves a partial file or a stray temporary one; the
    resumed run encodes again and gets the same vectors. A cache of other texts is not reused."""
    from mixlm.training.joint import EncodedTexts

    bundle = load_bundle(base_bundle)
    encoder = ItemEncoder(bundle.load_encoder("cpu"), bundle.encoder_tokenizer, bundle.config.encoding, "")
    texts = {f"doc:{n}": f"item {n} " + "word " * n for n in range(6)}
    path = tmp_path / "encoded.safetensors"
    whole = EncodedTexts.build(path, encoder, texts, log=lambda line: None)
    assert not path.with_suffix(".tmp").exists()
    path.with_suffix(".tmp").write_bytes(path.read_bytes()[:100])  # a kill during the next save
    path.write_bytes(path.read_bytes()[:100])  # a file system that tore the replaced one
    lines = []
    again = EncodedTexts.build(path, encoder, texts, log=lines.append)
    assert lines and torch.equal(again.retrieval, whole.retrieval)
    others = {"doc:x": "another text"}
    assert EncodedTexts.build(path, encoder, others, log=lambda line: None).keys == ["doc:x"]


def test_averaged_runs_rank_like_the_mean_of_their_scores_from_the_same_store_records(student, teacher_bundle,
                                                                                        teacher_pairs, tmp_path):
    """Two seeds continuing one bundle, averaged: the item tokens (encoder_id, projection) are theirs, no
    fusion is carried over, the scores sit near the mean of the two runs' scores, and a bundle averaged
    with itself ranks exactly as it did."""
    dataset, chosen = teacher_pairs
    runs = [_joint(teacher_bundle, tmp_path / f"seed{seed}", steps=6, lr=1e-2, start_from=student, seed=seed)
            for seed in (0, 1)]
    averaged, kept = average_bundles(runs, tmp_path / "averaged", **QUIET)
    assert kept > 0.9
    assert averaged.encoder_id == load_bundle(student).encoder_id and averaged.config.fusion is None
    assert averaged.projection_file.read_bytes() == load_bundle(runs[0]).projection_file.read_bytes()
    for group in chosen[:3]:
        first, second = (_student_scores(run, dataset, group) for run in runs)
        assert not torch.allclose(first, second, atol=1e-3)  # the seeds took other paths
        gap = (_student_scores(averaged.path, dataset, group) - (first + second) / 2).norm()
        assert gap < 0.5 * (first - second).norm()
    itself, kept_itself = average_bundles([runs[0], runs[0]], tmp_path / "itself", **QUIET)
    assert kept_itself > 0.9999
    for group in chosen[:3]:
        assert torch.allclose(_student_scores(itself.path, dataset, group), _student_scores(runs[0], dataset, group),
                              atol=1e-3)


def test_bundles_that_read_items_differently_are_not_averaged(student, teacher_bundle, tmp_path):
    with pytest.raises(InputError, match="at least two"):
        average_bundles([student], tmp_path / "one", **QUIET)
    fresh = _joint(teacher_bundle, tmp_path / "fresh", steps=1, lr=1e-3)  # its own projection
    with pytest.raises(InputError, match="encoder_id"):
        average_bundles([student, fresh], tmp_path / "ids", **QUIET)
    narrower = tmp_path / "narrower"  # the student with its adapter cut to rank 2: same items, other adapter shape
    shutil.copytree(student, narrower)
    adapter = load_file(str(narrower / "ranker" / "adapter.safetensors"))
    save_file({k: (v[:2] if k.endswith("lora_A") else v[:, :2]).contiguous() for k, v in adapter.items()},
              str(narrower / "ranker" / "adapter.safetensors"))
    (narrower / "ranker" / "adapter.json").write_text(json.dumps({"rank": 2, "alpha": 4.0, "top_layers": None}))
    with pytest.raises(InputError, match="ranker adapter is"):
        average_bundles([student, narrower], tmp_path / "ranks", **QUIET)
    assert not any((tmp_path / name).exists() for name in ("one", "ids", "ranks"))
