import numpy as np
import pytest
import torch

from mixlm.ranker import shared_prefix
from mixlm.ranker.model import MixedInputRanker


@pytest.fixture(scope="module")
def ranker(tiny_bundle):
    return MixedInputRanker.from_bundle(tiny_bundle)


def items(ranker, n, t, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(t, ranker.hidden_size, generator=generator) for _ in range(n)]


@pytest.mark.parametrize("n_tokens", [1, 4])
@pytest.mark.parametrize("n_items", [1, 7, 64])
@pytest.mark.parametrize("query", ["python", "senior data engineer for streaming pipelines with kafka and beam"])
def test_amortized_equals_naive(ranker, n_tokens, n_items, query):
    candidates = items(ranker, n_items, n_tokens, seed=n_items)
    naive = ranker.score(query, candidates, backend="naive")
    amortized = ranker.score(query, candidates, backend="amortized")
    np.testing.assert_allclose(amortized.log_odds, naive.log_odds, atol=1e-4, rtol=1e-4)
    assert np.all((amortized.p_yes > 0) & (amortized.p_yes < 1))


def test_mixed_lengths_in_one_request(ranker):
    candidates = items(ranker, 3, 1) + items(ranker, 2, 4, seed=5)
    np.testing.assert_allclose(ranker.score("q", candidates).log_odds,
                               ranker.score("q", candidates, backend="naive").log_odds, atol=1e-4)


def test_mixed_input_equals_text_input(ranker):
    """Injecting the ranker's own token embeddings of the item text is the text prompt, exactly."""
    query, item = "data engineer", "Build streaming pipelines with Kafka."
    injected = ranker.item_text_embeddings(item)
    mixed = ranker.score(query, [injected], backend="amortized").log_odds[0]
    text = ranker.prompt.system + ranker.prompt.instruction.format(query=query)
    ids = ranker.tokenizer.encode(text, add_special_tokens=True) + ranker.tokenizer.encode(
        item, add_special_tokens=False) + ranker.tokenizer.encode(ranker.prompt.end, add_special_tokens=False)
    with torch.inference_mode():
        logits = ranker.model(input_ids=torch.tensor([ids])).logits[0, -1]
    expected = (logits[ranker.prompt.yes_token_id] - logits[ranker.prompt.no_token_id]).item()
    assert mixed == pytest.approx(expected, abs=1e-4)


def test_head_equals_softmax_over_yes_no(ranker):
    candidates = items(ranker, 5, 1, seed=3)
    scores = ranker.score("nurse", candidates, backend="naive")
    for item, p_yes in zip(candidates, scores.p_yes, strict=True):
        sequence = torch.cat([ranker.embed(ranker.prefix_ids("nurse")), item, ranker.embed(ranker.end_ids)])
        with torch.inference_mode():
            logits = ranker.model(inputs_embeds=sequence.unsqueeze(0)).logits[0, -1]
        pair = torch.softmax(logits[[ranker.prompt.yes_token_id, ranker.prompt.no_token_id]], dim=0)
        assert p_yes == pytest.approx(pair[0].item(), abs=1e-5)


def test_empty_and_bad_backend(ranker):
    assert ranker.score("q", []).p_yes.shape == (0,)
    with pytest.raises(ValueError, match="backend"):
        ranker.score("q", items(ranker, 1, 1), backend="packed-ish")
    with pytest.raises(ValueError, match="backend"):
        ranker.score_batch([("q", items(ranker, 1, 1))], backend="naive")


def _mixed_requests(ranker, n_tokens):
    """Queries of different prefix lengths, one without candidates, candidates of two lengths."""
    return [("python", items(ranker, 4, n_tokens, seed=1)),
            ("senior data engineer for streaming pipelines with kafka and beam",
             items(ranker, 6, n_tokens, seed=2) + items(ranker, 2, 1, seed=9)),
            ("nurse", []),
            ("a", items(ranker, 3, n_tokens, seed=3))]


@pytest.mark.parametrize("n_tokens", [1, 3])
@pytest.mark.parametrize("budget", [10, 16_384])
def test_shared_prefix_equals_naive_and_the_copying_path(ranker, n_tokens, budget):
    """The shared-prefix backend (no cache copy) against one full sequence per candidate and against
    the earlier path that copies the query cache per batch: several queries per forward, T_S > 1,
    and a budget small enough that a query's candidates span batches and batches mix queries."""
    assert ranker.shares_prefix and ranker.model.config._attn_implementation.startswith(shared_prefix.NAME_PREFIX)
    tight = MixedInputRanker(ranker.model, ranker.tokenizer, ranker.prompt, ranker.encoder_id, token_budget=budget)
    requests = _mixed_requests(ranker, n_tokens)
    shared = tight.score_batch(requests)
    copied = tight.score_batch(requests, backend="amortized-copy")
    for (query, candidates), one, other in zip(requests, shared, copied, strict=True):
        naive = ranker.score(query, candidates, backend="naive").log_odds
        np.testing.assert_allclose(one.log_odds, naive, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(one.log_odds, other.log_odds, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(one.p_yes, 1 / (1 + np.exp(-one.log_odds)), rtol=1e-6)


def test_long_rows_take_sdpa_and_still_equal_naive(ranker):
    """Rows longer than SHORT_ROWS (text baselines) take the expanded-prefix SDPA route."""
    long = shared_prefix.SHORT_ROWS + 5
    requests = [("python", items(ranker, 2, long, seed=11) + items(ranker, 2, 1, seed=12)),
                ("senior data engineer for streaming pipelines", items(ranker, 3, long - 3, seed=13))]
    for (query, candidates), scores in zip(requests, ranker.score_batch(requests), strict=True):
        np.testing.assert_allclose(scores.log_odds, ranker.score(query, candidates, backend="naive").log_odds,
                                   atol=1e-4, rtol=1e-4)


def test_other_forwards_are_unchanged_by_the_dispatcher(ranker, tiny_bundle):
    """Calls without a shared prefix (the naive path, prefill, training) reach the original attention."""
    from mixlm.encoders.bundle import load_bundle

    plain = load_bundle(tiny_bundle).load_ranker()
    assert not plain.config._attn_implementation.startswith(shared_prefix.NAME_PREFIX)
    ids = torch.tensor([ranker.tokenizer.encode("data engineer in Oslo writing python", add_special_tokens=True)])
    with torch.inference_mode():
        np.testing.assert_allclose(ranker.model(input_ids=ids).logits.numpy(), plain(input_ids=ids).logits.numpy(),
                                   atol=1e-5)
    assert not shared_prefix.enable(torch.nn.Linear(2, 2))  # not a transformers model: left alone
    plain.config.sliding_window = 8
    assert not shared_prefix.enable(plain) and plain.config._attn_implementation == "sdpa"  # not reproduced


def test_a_forward_whose_attention_skipped_the_prefix_falls_back_to_copying(ranker, monkeypatch):
    """As with a transformers that does not pass keyword arguments down to attention: detected, copied."""
    read = shared_prefix.attention

    def forgetful(module, query, key, value, prefix, scaling=None):
        out = read(module, query, key, value, prefix, scaling)
        prefix.layers_read.clear()
        return out

    monkeypatch.setattr(shared_prefix, "attention", forgetful)
    fresh = MixedInputRanker(ranker.model, ranker.tokenizer, ranker.prompt, ranker.encoder_id)
    candidates = items(ranker, 4, 1, seed=6)
    np.testing.assert_allclose(fresh.score("nurse", candidates).log_odds,
                               ranker.score("nurse", candidates, backend="naive").log_odds, atol=1e-4)
    assert not fresh.shares_prefix


def test_amortized_falls_back_to_copying_where_attention_cannot_be_shared(ranker, monkeypatch):
    monkeypatch.setattr(shared_prefix, "enable", lambda model: False)
    fallback = MixedInputRanker(ranker.model, ranker.tokenizer, ranker.prompt, ranker.encoder_id)
    assert not fallback.shares_prefix
    candidates = items(ranker, 5, 2, seed=4)
    np.testing.assert_allclose(fallback.score("nurse", candidates).log_odds,
                               ranker.score("nurse", candidates, backend="naive").log_odds, atol=1e-4)


def test_padded_batches_under_a_small_token_budget(ranker):
    """Variable-length candidates split over several right-padded forward passes still match naive."""
    tight = MixedInputRanker(ranker.model, ranker.tokenizer, ranker.prompt, ranker.encoder_id, token_budget=12)
    candidates = [ranker.item_text_embeddings(text) for text in
                  ["yes", "a much longer item text about python and kafka", "nurse", "", "data engineer in Oslo"]]
    np.testing.assert_allclose(tight.score("q", candidates).log_odds,
                               ranker.score("q", candidates, backend="naive").log_odds, atol=1e-4)


def test_batched_queries_of_different_lengths_equal_one_by_one(ranker):
    requests = [("python", items(ranker, 3, 1, seed=1)),
                ("senior data engineer for streaming pipelines with kafka and beam", items(ranker, 5, 4, seed=2)),
                ("nurse", []),
                ("a", items(ranker, 2, 1, seed=3) + items(ranker, 1, 4, seed=4))]
    batched = ranker.score_batch(requests)
    assert [len(s.p_yes) for s in batched] == [3, 5, 0, 3]
    for (query, candidates), scores in zip(requests, batched, strict=True):
        np.testing.assert_allclose(scores.log_odds, ranker.score(query, candidates, backend="naive").log_odds,
                                   atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def reading_ranker(tiny_bundle):
    """The tiny ranker reading the query's tokens and the query-item interaction (RankerInputs)."""
    from mixlm.encoders.bundle import load_bundle
    from mixlm.encoders.config import RankerInputs
    from mixlm.encoders.projection import init_interaction

    bundle = load_bundle(tiny_bundle)
    interaction = init_interaction(16, bundle.config.ranker.hidden_size, seed=1)
    with torch.no_grad():
        interaction.weight.mul_(50)  # large enough that a wrong product would show
    return MixedInputRanker(bundle.load_ranker(), bundle.ranker_tokenizer, bundle.config.prompt, bundle.encoder_id,
                            inputs=RankerInputs(query_vector=True, interaction=True), interaction=interaction)


def _query_and_retrieval(ranker, n, seed=0):
    from mixlm.encoders.item_encoder import EncodedItem

    generator = torch.Generator().manual_seed(seed)
    query = EncodedItem(torch.randn(2, ranker.hidden_size, generator=generator).numpy(),
                        torch.randn(16, generator=generator).numpy(), 0, False)
    return query, torch.randn(n, 16, generator=generator).numpy()


@pytest.mark.parametrize("n_items", [1, 9])
def test_query_tokens_and_interaction_keep_amortized_equal_to_naive(reading_ranker, n_items):
    candidates = items(reading_ranker, n_items, 1, seed=7)
    query, retrieval = _query_and_retrieval(reading_ranker, n_items)
    kwargs = {"query_embedding": query, "item_retrieval": retrieval}
    np.testing.assert_allclose(reading_ranker.score("q", candidates, **kwargs).log_odds,
                               reading_ranker.score("q", candidates, backend="naive", **kwargs).log_odds, atol=1e-4)
    batched = reading_ranker.score_batch([("q", candidates), ("another query", candidates)],
                                         query_embeddings=[query, query], item_retrievals=[retrieval, retrieval])
    assert not np.allclose(batched[0].log_odds, batched[1].log_odds)  # each candidate reads its own query
    np.testing.assert_allclose(batched[0].log_odds, reading_ranker.score("q", candidates, **kwargs).log_odds,
                               atol=1e-4)


def test_query_tokens_and_interaction_on_the_shared_prefix_with_several_queries(reading_ranker):
    """Several queries with their own embedding tokens and interactions, T_S = 2, in one forward."""
    requests, embeddings, retrievals = [], [], []
    for index, query in enumerate(["q", "a much longer query about streaming data pipelines", "nurse"]):
        candidates = items(reading_ranker, 3 + index, 2, seed=20 + index)
        embedding, retrieval = _query_and_retrieval(reading_ranker, len(candidates), seed=30 + index)
        requests.append((query, candidates))
        embeddings.append(embedding)
        retrievals.append(retrieval)
    shared = reading_ranker.score_batch(requests, query_embeddings=embeddings, item_retrievals=retrievals)
    copied = reading_ranker.score_batch(requests, query_embeddings=embeddings, item_retrievals=retrievals,
                                        backend="amortized-copy")
    for (query, candidates), embedding, retrieval, one, other in zip(requests, embeddings, retrievals, shared,
                                                                     copied, strict=True):
        naive = reading_ranker.score(query, candidates, backend="naive", query_embedding=embedding,
                                     item_retrieval=retrieval).log_odds
        np.testing.assert_allclose(one.log_odds, naive, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(one.log_odds, other.log_odds, atol=1e-4, rtol=1e-4)


def test_the_query_tokens_close_the_prefix_and_the_interaction_is_what_the_docs_say(reading_ranker):
    """By hand: prefix = prompt tokens + query tokens; item token = vector + W (q^ * d^) sqrt(width)."""
    candidates = items(reading_ranker, 1, 1, seed=3)
    query, retrieval = _query_and_retrieval(reading_ranker, 1, seed=4)
    score = reading_ranker.score("nurse", candidates, query_embedding=query, item_retrieval=retrieval).log_odds[0]
    q = torch.nn.functional.normalize(torch.tensor(query.retrieval_vector), dim=-1)
    d = torch.nn.functional.normalize(torch.tensor(retrieval[0]), dim=-1)
    token = candidates[0] + reading_ranker.interaction(q * d * 16 ** 0.5)
    sequence = torch.cat([reading_ranker.embed(reading_ranker.prefix_ids("nurse")), torch.tensor(query.vectors),
                          token, reading_ranker.embed(reading_ranker.end_ids)])
    with torch.inference_mode():
        logits = reading_ranker.model(inputs_embeds=sequence.unsqueeze(0)).logits[0, -1]
    expected = (logits[reading_ranker.prompt.yes_token_id] - logits[reading_ranker.prompt.no_token_id]).item()
    assert score == pytest.approx(expected, abs=1e-4)
    other = reading_ranker.score("nurse", candidates, query_embedding=query, item_retrieval=-retrieval).log_odds[0]
    assert abs(other - score) > 1e-5  # the item's retrieval vector reaches the score


def test_a_ranker_that_reads_query_vectors_refuses_a_call_without_them(reading_ranker):
    with pytest.raises(ValueError, match="query's embedding tokens"):
        reading_ranker.score("q", items(reading_ranker, 2, 1))


def test_a_causal_lm_other_than_llama_ranks_too(tiny_bundle):
    """GPT-2 keeps its transformer under ``.transformer``, not ``.model``: the ranker reaches it
    through the portable ``base_model``, and every backend agrees with the reference."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from mixlm.encoders.bundle import load_bundle

    bundle = load_bundle(tiny_bundle)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(bundle.ranker_tokenizer), n_positions=256, n_embd=32,
                                       n_layer=2, n_head=4, bos_token_id=None, eos_token_id=None))
    gpt2 = MixedInputRanker(model, bundle.ranker_tokenizer, bundle.config.prompt, bundle.encoder_id)
    assert gpt2.decoder is model.transformer
    candidates = items(gpt2, 5, 2, seed=7)
    naive = gpt2.score("data engineer", candidates, backend="naive").log_odds
    for backend in ("amortized", "amortized-copy"):
        np.testing.assert_allclose(gpt2.score("data engineer", candidates, backend=backend).log_odds, naive,
                                   atol=1e-4, rtol=1e-4)
