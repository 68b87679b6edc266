import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from mixlm.cli import main
from mixlm.encoders import ItemEncoder
from mixlm.ranker.client import EncoderMismatchError, RankerClient
from mixlm.ranker.model import MixedInputRanker
from mixlm.ranker.text_baselines import FullTextRanker, TruncatedTextRanker
from mixlm.schemas import EmbeddingRecord, ItemEvent
from mixlm.schemas.errors import EXIT_USAGE
from mixlm.store import EmbeddingStore
from tests.factories import make_record

ITEMS = {f"job-{n}": (f"Title {n}", f"Description of job {n}: python, kafka and {'beam ' * n}") for n in range(12)}


@pytest.fixture(scope="module")
def store_path(tiny_bundle, tmp_path_factory):
    path = tmp_path_factory.mktemp("ranker") / "store"
    encoder = ItemEncoder.from_bundle(tiny_bundle)
    events = [ItemEvent(item_id, "upsert", 1, title, text) for item_id, (title, text) in ITEMS.items()]
    store = EmbeddingStore.open(path, create=True)
    store.put_many(encoder.encode_events(events))
    store.put_many([EmbeddingRecord.tombstone("job-11", 2, encoder.encoder_id)])
    return path


@pytest.fixture(scope="module")
def client(tiny_bundle, store_path):
    return RankerClient.open(tiny_bundle, store_path)


def test_score_keeps_request_order_and_lists_missing(client):
    result = client.score("python kafka", ["job-3", "ghost", "job-1", "job-11"])
    assert [item.item_id for item in result.items] == ["job-3", "job-1"]
    assert result.missing == ["ghost", "job-11"]  # never stored, and deleted
    for item in result.items:
        assert 0 < item.p_yes < 1 and item.p_yes == pytest.approx(1 / (1 + np.exp(-item.log_odds)), rel=1e-6)
        assert item.score == item.log_odds  # no first-stage scores: the final score is MixLM alone
    assert [item.title for item in result.items] == ["Title 3", "Title 1"]  # the display titles, from the store


def test_scores_equal_the_ranker_on_the_stored_vectors(client):
    ids = ["job-0", "job-5", "job-9"]
    lookup = client.store.get_many(client.ranker.encoder_id, ids)
    direct = client.ranker.score("python", list(lookup.vectors), backend="naive")
    np.testing.assert_allclose([i.log_odds for i in client.score("python", ids).items], direct.log_odds, atol=1e-4)


def test_rank_orders_best_first_and_cuts_top_k(client):
    ids = list(ITEMS)[:11]
    ranked = client.rank("beam", ids, top_k=4)
    assert len(ranked.items) == 4
    all_scores = sorted((i.log_odds for i in client.score("beam", ids).items), reverse=True)
    np.testing.assert_allclose([i.log_odds for i in ranked.items], all_scores[:4])


def test_duplicates_empty_and_cap(client, tiny_bundle, store_path):
    assert [i.item_id for i in client.score("q", ["job-1", "job-1", "job-2"]).items] == ["job-1", "job-2"]
    empty = client.score("q", [])
    assert empty.items == [] and empty.missing == []
    capped = RankerClient.open(tiny_bundle, store_path, max_candidates=3)
    with pytest.raises(ValueError, match="cap of 3"):
        capped.score("q", ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="empty"):
        client.score("  ", ["job-1"])


def test_encoder_mismatch_is_refused(tiny_bundle, tmp_path):
    other = EmbeddingStore.open(tmp_path / "other", create=True)
    other.put_many([make_record("x", 1, encoder_id="enc-somebody-else", dim=64)])
    other.promote("enc-somebody-else")
    ranker = MixedInputRanker.from_bundle(tiny_bundle)
    with pytest.raises(EncoderMismatchError, match="enc-somebody-else") as caught:
        RankerClient(ranker, other)
    assert ranker.encoder_id in str(caught.value)
    with pytest.raises(EncoderMismatchError, match=ranker.encoder_id):
        RankerClient(ranker, other, encoder_id="enc-somebody-else")

    # no active encoder: still refused, naming the bundle's encoder, the store's encoders and the fix
    unpromoted = EmbeddingStore.open(tmp_path / "unpromoted", create=True)
    unpromoted.put_many([make_record("x", 1, encoder_id="enc-a", dim=64), make_record("x", 1, encoder_id="enc-b",
                                                                                         dim=64)])
    with pytest.raises(EncoderMismatchError) as caught:
        RankerClient(ranker, unpromoted)
    for fragment in (ranker.encoder_id, "enc-a, enc-b", "backfill", "--bundle", "or use the bundle of one of them"):
        assert fragment in str(caught.value)
    empty = EmbeddingStore.open(tmp_path / "empty", create=True)
    with pytest.raises(EncoderMismatchError, match="holds no records"):
        RankerClient(ranker, empty)


@pytest.mark.parametrize("command", [["rank", "--query", "q", "--items", "x"], ["search", "q"]])
def test_rank_and_search_with_a_bundle_of_another_encoder_fail_with_what_to_do(tiny_bundle, tmp_path, command):
    other = EmbeddingStore.open(tmp_path / "other", create=True)
    other.put_many([make_record("x", 1, encoder_id="enc-somebody-else", dim=64)])
    result = CliRunner().invoke(main, [*command, "--bundle", str(tiny_bundle), "--store", str(other.root)])
    assert result.exit_code == 1, result.output
    [line] = result.stderr.strip().splitlines()
    encoder_id = MixedInputRanker.from_bundle(tiny_bundle).encoder_id
    assert line.startswith("mixlm: error: ") and encoder_id in line and "enc-somebody-else" in line
    assert "backfill the store with this bundle" in line and "Traceback" not in result.output


def test_text_baselines(client):
    texts = [text for _, text in list(ITEMS.values())[:4]]
    full = FullTextRanker(client.ranker).score("python", texts)
    truncated = TruncatedTextRanker(client.ranker, max_item_tokens=5).score("python", texts)
    naive = FullTextRanker(client.ranker).score("python", texts, backend="naive")
    np.testing.assert_allclose(full.log_odds, naive.log_odds, atol=1e-4)
    assert full.p_yes.shape == truncated.p_yes.shape == (4,)
    assert not np.allclose(full.log_odds, truncated.log_odds)
    ranked = FullTextRanker(client.ranker).rank("python", texts, top_k=2)
    assert len(ranked) == 2 and ranked[0][1] >= ranked[1][1]


def test_rank_cli(tiny_bundle, store_path, tmp_path):
    base = ["rank", "--bundle", str(tiny_bundle), "--store", str(store_path), "--query", "kafka"]
    result = CliRunner().invoke(main, [*base, "--items", "job-1,job-2,ghost", "--top-k", "1", "-o", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data["items"]) == 1 and data["missing"] == ["ghost"] and data["items"][0]["rank"] == 1
    candidates = tmp_path / "ids.txt"
    candidates.write_text("job-1\njob-4\n\n")
    assert data["items"][0]["title"] in ("Title 1", "Title 2")
    table = CliRunner().invoke(main, [*base, "--candidates", str(candidates)])
    assert table.exit_code == 0 and "job-4" in table.stdout
    assert table.stdout.splitlines()[0].split() == ["RANK", "ITEM_ID", "P_YES", "LOG_ODDS", "TITLE"]
    assert "Title 4" in table.stdout
    both = CliRunner().invoke(main, [*base])
    assert both.exit_code == EXIT_USAGE and "exactly one" in both.stderr
    missing = CliRunner().invoke(main, [*base, "--candidates", str(tmp_path / "none.txt")])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    over = CliRunner().invoke(main, [*base, "--items", "a,b,c", "--max-candidates", "2"])
    assert over.exit_code == 1 and "cap of 2" in over.stderr and "Traceback" not in over.output


def test_rank_cli_keeps_third_party_progress_bars_and_warnings_out_unless_verbose(tiny_bundle, store_path):
    """A process of its own: loading the models prints transformers' "Loading weights" bar only with -v."""
    import subprocess
    import sys

    def run(*flags):
        command = [sys.executable, "-c", "from mixlm.cli import main; main()", *flags, "rank", "--bundle",
                   str(tiny_bundle), "--store", str(store_path), "--query", "kafka", "--items", "job-1,job-2"]
        switches = ("TQDM_", "TRANSFORMERS_", "HF_HUB_", "PYTHONWARN")  # an in-process `mixlm` may have set them
        env = {k: v for k, v in os.environ.items() if not k.startswith(switches)}
        return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)

    quiet, verbose = run(), run("-v")
    assert quiet.returncode == verbose.returncode == 0, quiet.stderr + verbose.stderr
    assert quiet.stderr == "" and "Title 1" in quiet.stdout
    assert "Loading weights" in verbose.stderr and verbose.stdout == quiet.stdout


def test_score_many_equals_one_by_one(client):
    requests = [("python", ["job-1", "job-2"]), ("a much longer query about kafka and beam", ["job-3", "ghost"]),
                ("nurse", [])]
    many = client.score_many(requests)
    for (query, ids), result in zip(requests, many, strict=True):
        single = client.score(query, ids)
        assert [i.item_id for i in result.items] == [i.item_id for i in single.items]
        assert result.missing == single.missing
        np.testing.assert_allclose([i.log_odds for i in result.items], [i.log_odds for i in single.items], atol=1e-4)


def test_request_batcher_serves_concurrent_callers_together(client):
    import threading

    from mixlm.ranker.client import RequestBatcher

    queries = [f"query {n} about python and kafka" for n in range(12)]
    expected = {q: client.rank(q, list(ITEMS), top_k=3) for q in queries}
    results, errors = {}, []
    with RequestBatcher(client, max_wait_ms=50, max_requests=8) as batcher:
        def call(query):
            try:
                results[query] = batcher.rank(query, list(ITEMS), top_k=3)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        threads = [threading.Thread(target=call, args=(q,)) for q in queries]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with pytest.raises(ValueError, match="empty"):
            batcher.rank(" ", ["job-1"])  # a bad request fails alone
    assert not errors
    assert max(batcher.batch_sizes) > 1 and sum(batcher.batch_sizes[:-1]) == len(queries)
    for query in queries:
        assert [i.item_id for i in results[query].items] == [i.item_id for i in expected[query].items]
        np.testing.assert_allclose([i.log_odds for i in results[query].items],
                                   [i.log_odds for i in expected[query].items], atol=1e-4)


def test_first_stage_scores_give_the_bundle_s_fused_final_score(client):
    from mixlm.encoders.config import FusionConfig
    from mixlm.ranker.fusion import standardise

    ids = ["job-0", "job-4", "job-7", "job-9"]
    bm25 = {"job-0": 1.0, "job-4": 9.0, "job-7": 3.0, "job-9": 2.0}
    fused = RankerClient(client.ranker, client.store, fusion=FusionConfig(mixlm=1.0, first_stage=4.0))
    result = fused.score("python", ids, first_stage_scores=bm25)
    log_odds = np.array([i.log_odds for i in result.items])
    expected = standardise(log_odds) + 4.0 * standardise(np.array([bm25[i] for i in ids]))
    np.testing.assert_allclose([i.score for i in result.items], expected, atol=1e-6)
    assert fused.rank("python", ids, first_stage_scores=bm25).items[0].item_id == "job-4"  # BM25 dominates here
    with pytest.raises(ValueError, match="first_stage_scores lacks 1 of the item ids"):
        fused.score("python", ids, first_stage_scores={k: v for k, v in bm25.items() if k != "job-9"})


def test_a_client_of_a_ranker_that_reads_query_vectors_needs_the_encoder(client):
    import copy

    from mixlm.encoders.config import RankerInputs

    reading = copy.copy(client.ranker)  # a shallow copy that reads query tokens
    reading.inputs = RankerInputs(query_vector=True)
    with pytest.raises(ValueError, match="query_encoder"):
        RankerClient(reading, client.store)
