"""``mixlm rank``: score a query against candidate ids from the store."""

from __future__ import annotations

from pathlib import Path

import click

from mixlm.errors import EXIT_NOT_FOUND, EXIT_USAGE, fail, user_errors
from mixlm.options import bundle_option, store_option
from mixlm.output import columns_table, output_option, render
from mixlm.ranker.defaults import DEFAULT_MAX_CANDIDATES
from mixlm.schemas.item_event import shorten

TABLE_TITLE_CHARS = 60  # tables cut display titles to this; JSON and YAML carry them whole


def _candidate_ids(items: str | None, candidates: Path | None) -> list[str]:
    if bool(items) == bool(candidates):
        fail("give exactly one of --items and --candidates", EXIT_USAGE)
    if items:
        return [item.strip() for item in items.split(",") if item.strip()]
    if not candidates.is_file():
        fail(f"candidates file {candidates} does not exist", EXIT_NOT_FOUND)
    return [line.strip() for line in candidates.read_text().splitlines() if line.strip()]


@click.command()
@bundle_option(required=False, help="rank here with this bundle (or --server)")
@click.option("--server", default=None, metavar="URL",
              help="rank on a `mixlm serve` server instead (no models load here), e.g. http://127.0.0.1:8080")
@click.option("--auth-token-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="the server's bearer token (with --server)")
@store_option()
@click.option("--query", required=True, help="the search query")
@click.option("--items", default=None, help="candidate item ids, comma-separated")
@click.option("--candidates", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="a file of candidate ids, one per line")
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="keep the best K")
@click.option("--backend", type=click.Choice(["amortized", "naive"]), default="amortized", show_default=True,
              help="(local only)")
@click.option("--max-candidates", type=click.IntRange(min=1), default=DEFAULT_MAX_CANDIDATES, show_default=True,
              help="(local only; a server has its own cap)")
@output_option()
@user_errors
def rank(bundle_dir, server, auth_token_file, store_path, query, items, candidates, top_k, backend, max_candidates,
         output):
    """Rank candidate items for a query with the mixed-input ranker (MixLM's log-odds, best first)."""
    if bool(bundle_dir) == bool(server):
        fail("give exactly one of --bundle and --server", EXIT_USAGE)
    if auth_token_file and not server:
        fail("--auth-token-file goes with --server", EXIT_USAGE)
    ids = _candidate_ids(items, candidates)
    if server:
        from mixlm.ranker.http_client import RankerHTTPClient
        from mixlm.ranker.serve_cli import read_token_file

        token = read_token_file(auth_token_file) if auth_token_file else None
        result = RankerHTTPClient(server, token).rerank(query, ids, top_k)
    else:
        from mixlm.ranker.client import RankerClient

        client = RankerClient.open(bundle_dir, store_path, backend=backend, max_candidates=max_candidates)
        result = client.rank(query, ids, top_k)
    rows = [{"rank": n, "item_id": item.item_id, "p_yes": round(item.p_yes, 6), "log_odds": round(item.log_odds, 4),
             "title": item.title} for n, item in enumerate(result.items, start=1)]
    table = _table(rows, ("rank", "item_id", "p_yes", "log_odds", "title")) if rows else "no candidate was found"
    if result.missing:
        table += f"\nmissing from the store: {', '.join(result.missing)}"
    click.echo(render({"query": query, "items": rows, "missing": result.missing}, output, table))


@click.command()
@click.argument("query")
@bundle_option()
@store_option()
@click.option("--k", "k", type=click.IntRange(min=1), default=100, show_default=True, help="first-stage candidates")
@click.option("--rerank", type=click.IntRange(min=0), default=20, show_default=True,
              help="how many of them the ranker re-scores (0: first stage only)")
@click.option("--retriever", type=click.Choice(["faiss", "bm25"]), default="faiss", show_default=True)
@click.option("--corpus", type=click.Path(exists=True, path_type=Path), default=None,
              help="BEIR corpus for --retriever bm25 (its ids must be the store's item ids)")
@output_option()
@user_errors
def search(query, bundle_dir, store_path, k, rerank, retriever, corpus, output):
    """Retrieve candidates (FAISS over retrieval vectors, or BM25) and rerank them with the ranker.

    The reranked items are ordered by the bundle's final score: MixLM's log-odds fused with the
    first-stage scores (plain log-odds for a bundle without fusion weights).
    """
    if retriever == "bm25" and corpus is None:  # before any model loads
        fail("--retriever bm25 needs --corpus", EXIT_USAGE)
    from mixlm.ranker.client import RankerClient
    from mixlm.ranker.retrieval import BM25Index
    from mixlm.store.index import VectorIndex

    client = RankerClient.open(bundle_dir, store_path)
    if retriever == "bm25":
        from mixlm.schemas.beir import read_corpus

        docs = list(read_corpus(corpus))
        hits = BM25Index([d.doc_id for d in docs], [d.full_text() for d in docs]).search(query, k)
    else:
        from mixlm.encoders import ItemEncoder

        encoder = client.query_encoder or ItemEncoder.from_bundle(bundle_dir)
        query_vector = encoder.encode_queries([query])[0].retrieval_vector
        hits = VectorIndex.load(client.store, client.ranker.encoder_id).search(query_vector, k)
    first_stage = {hit.item_id: hit.score for hit in hits}
    reranked = client.rank(query, [hit.item_id for hit in hits[:rerank]], first_stage_scores=first_stage).items \
        if rerank else []
    titles = client.store.titles(client.ranker.encoder_id, [hit.item_id for hit in hits[rerank:]])
    rows = [{"rank": n, "item_id": item.item_id, "score": round(item.score, 4), "p_yes": round(item.p_yes, 6),
             "first_stage": round(first_stage[item.item_id], 4), "title": item.title}
            for n, item in enumerate(reranked, start=1)]
    rows += [{"rank": len(rows) + n, "item_id": hit.item_id, "score": None, "p_yes": None,
              "first_stage": round(hit.score, 4), "title": titles.get(hit.item_id, "")}
             for n, hit in enumerate(hits[rerank:], start=1)]
    table = _table(rows, ("rank", "item_id", "score", "p_yes", "first_stage", "title")) if rows else "nothing found"
    click.echo(render({"query": query, "retriever": retriever, "results": rows}, output, table))


def _table(rows: list[dict], columns: tuple[str, ...]) -> str:
    """Result rows as a table, display titles cut to ``TABLE_TITLE_CHARS``."""
    return columns_table([{**row, "title": shorten(row["title"], TABLE_TITLE_CHARS)} for row in rows], columns)
