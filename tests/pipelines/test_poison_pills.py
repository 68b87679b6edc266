"""Poison pills never crash a job: every input that cannot become an event is a dead letter with its reason.

Real Beam runs on the local runner, a real store, the embedded Kafka broker (Tansu) and the tiny bundle.
"""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from kafka import KafkaProducer

from mixlm.encoders import ItemEncoder
from mixlm.pipelines.backfill import run_backfill
from mixlm.pipelines.elements import DEAD, KafkaPosition, ParsedEvent, RawEvent
from mixlm.pipelines.encode import ItemEncoderHandler
from mixlm.pipelines.produce import ensure_topic, produce, produce_lines
from mixlm.pipelines.sources import _ReadLines
from mixlm.pipelines.stop import STOP
from mixlm.pipelines.streaming import run_stream
from mixlm.pipelines.transforms import ParseEvents
from mixlm.schemas import ItemEvent
from mixlm.store import EmbeddingStore
from tests.pipelines.streams import assert_counts_add_up, read_topic

NESTED = "is nested too deeply to decode"
HUGE = "holds an integer literal longer than 4,300 digits"
DIGITS = b"1" * 5000
# (line, reason): each about 2 KB or more, each raised out of json.loads before
POISON = [
    (b'{"a":' * 1000 + b"1" + b"}" * 1000, f"value: {NESTED}"),
    (b'{"item_id": "h1", "op": "upsert", "version": ' + DIGITS + b', "text": "t"}', f"value: {HUGE}"),
    (b"[" * 1000 + b"]" * 1000, f"value: {NESTED}"),
    (b'{"item_id": "h2", "op": "upsert", "version": 1, "title": ' + DIGITS + b', "text": "t"}', f"value: {HUGE}"),
    (b'{"item_id": "h3", "op": "upsert", "version": 1, "text": "t", "extra": ' + DIGITS + b"}", f"value: {HUGE}"),
    (b'{"item_id": "u", "op": "upsert", "version": 1, "text": "\xff"}',
     "value: is not valid UTF-8 (byte 0xff at offset 56)"),
]


def quiet(_line):
    pass


def valid_event(n: int) -> ItemEvent:
    return ItemEvent(f"ok-{n}", "upsert", 1, f"Title {n}", f"Body of item {n}")


def interleaved(poison: list[tuple[bytes, str]]) -> tuple[list[bytes], dict[int, str], list[str]]:
    """A valid event before, between and after the poison: (lines, 1-based poison line -> reason, valid ids)."""
    lines, reasons, valid = [], {}, []
    for index, (line, reason) in enumerate([*poison, (None, None)]):
        event = valid_event(index)
        lines.append(event.to_json().encode())
        valid.append(event.item_id)
        if line is not None:
            lines.append(line)
            reasons[len(lines)] = reason
    return lines, reasons, valid


def dead_letters(store_path, job_id) -> dict[str, str]:
    return {letter.source: letter.reason for letter in EmbeddingStore.open(store_path).dead_letters.list(job_id)}


def assert_landed(store_path, manifest, item_ids) -> None:
    assert manifest.status == "succeeded", manifest.error
    store = EmbeddingStore.open(store_path)
    assert store.get_many(manifest.encoder_id, item_ids).missing == []


FILE_POISON = [*POISON, (b"", "blank line"), (b" \t", "blank line")]


def test_backfill_of_jsonl_dead_letters_poison_lines_by_file_and_line(tiny_bundle, tmp_path):
    lines, reasons, valid = interleaved(FILE_POISON)
    catalog = tmp_path / "events.jsonl"
    catalog.write_bytes(b"\n".join(lines) + b"\r\n")  # a CRLF ending is not part of the last line
    store_path = tmp_path / "store"
    manifest = run_backfill(str(catalog), str(tiny_bundle), str(store_path), log=quiet)
    assert_landed(store_path, manifest, valid)
    c = manifest.counts
    assert (c.read, c.written, c.dead_lettered) == (len(lines), len(valid), len(reasons))
    assert_counts_add_up(c)
    assert dead_letters(store_path, manifest.job_id) == {f"{catalog}:{n}": reason for n, reason in reasons.items()}


def test_beir_corpus_gz_dead_letters_poison_lines(tiny_bundle, tmp_path):
    docs = [json.dumps({"_id": f"d{n}", "title": f"Doc {n}", "text": f"text {n}"}).encode() for n in range(3)]
    lines = [docs[0], POISON[0][0], docs[1], b"", POISON[1][0], docs[2]]
    corpus = tmp_path / "corpus.jsonl.gz"
    corpus.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    store_path = tmp_path / "store"
    manifest = run_backfill(str(corpus), str(tiny_bundle), str(store_path), log=quiet)
    assert_landed(store_path, manifest, ["d0", "d1", "d2"])
    assert (manifest.counts.read, manifest.counts.dead_lettered) == (6, 3)
    assert_counts_add_up(manifest.counts)
    assert dead_letters(store_path, manifest.job_id) == {
        f"{corpus}:2": f"value: {NESTED}", f"{corpus}:4": "blank line", f"{corpus}:5": f"value: {HUGE}"}


def test_stream_dead_letters_poison_messages_and_commits_past_them(tiny_bundle, kafka_broker, tmp_path):
    bs = kafka_broker.bootstrap_servers
    messages, reasons, valid = interleaved([*POISON, (b"", "empty message"), (b" \n ", "empty message"),
                                            (None, "empty message")])
    ensure_topic(bs, "poison", 1)
    producer = KafkaProducer(bootstrap_servers=bs, linger_ms=0, batch_size=1, acks="all")
    for value in messages:  # as they are: ``produce --raw`` would drop the blank ones
        producer.send("poison", key=b"tombstone" if value is None else None, value=value)  # Kafka needs one
    producer.flush()
    producer.close()
    store_path = tmp_path / "store"
    manifest = run_stream(bs, "poison", "poison-test", str(tiny_bundle), str(store_path),
                          max_records=len(messages), max_seconds=120, log=quiet)
    assert_landed(store_path, manifest, valid)
    assert (manifest.counts.read, manifest.counts.dead_lettered) == (len(messages), len(reasons))
    assert_counts_add_up(manifest.counts)
    assert dead_letters(store_path, manifest.job_id) == {f"poison/0@{n - 1}": r for n, r in reasons.items()}
    assert manifest.offsets["poison"] == {"0": len(messages)}

    again = run_stream(bs, "poison", "poison-test", str(tiny_bundle), str(store_path), max_seconds=3, log=quiet)
    assert again.status == "succeeded" and again.counts.read == 0


SURROGATE = b'{"item_id": "\\ud800", "op": "upsert", "version": 1, "text": "t"}'


def test_produce_skips_poison_lines_with_a_warning_or_sends_them_raw(kafka_broker, tmp_path):
    bs = kafka_broker.bootstrap_servers
    poison = [*POISON, (SURROGATE, "item_id: holds an unpaired surrogate '\\ud800' at index 0")]
    lines, reasons, valid = interleaved(poison)
    ensure_topic(bs, "skip", 1)
    warnings = []
    summary = produce_lines(bs, "skip", lines, warn=warnings.append)
    assert (summary.sent, summary.skipped, summary.invalid_lines) == (len(valid), len(reasons), list(reasons))
    assert warnings == [f"line {n}: skipped: {reason}" for n, reason in reasons.items()]
    records, _ = read_topic(bs, "skip", len(valid))
    assert [r.key for r in sorted(records, key=lambda r: r.offset)] == [item_id.encode() for item_id in valid]

    ensure_topic(bs, "raw", 1)
    summary = produce_lines(bs, "raw", [*lines, b""], raw=True, warn=quiet)
    assert (summary.sent, summary.invalid_sent, summary.blank) == (len(lines), len(reasons), 1)
    records, _ = read_topic(bs, "raw", len(lines))
    assert [r.value for r in sorted(records, key=lambda r: r.offset)] == lines
    # no poison line has a usable item_id: undecodable, or a lone surrogate that cannot be a key
    assert all(r.key is None for r in records if r.offset + 1 in reasons)

    path = tmp_path / "poison.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    for extra in ([], ["--raw"]):
        result = CliRunner().invoke(produce, ["--bootstrap-servers", bs, "--topic", "cli", "--input", str(path),
                                              *extra])
        assert result.exit_code == 0 and result.exception is None, result.output
        assert "Traceback" not in result.output and f"line 2: {'invalid' if extra else 'skipped'}" in result.stderr


def test_parquet_rows_that_cannot_be_converted_are_dead_letters(tiny_bundle, tmp_path):
    """A bytes title JSON cannot hold, a map with int keys, a timestamp Python cannot hold (year 3 million)."""
    schema = pa.schema([("item_id", pa.string()), ("op", pa.string()), ("version", pa.int64()),
                        ("title", pa.binary()), ("text", pa.string()), ("fields", pa.map_(pa.int64(), pa.string())),
                        ("event_time", pa.timestamp("s")), ("ignored", pa.binary())])
    rows = [{"item_id": f"p{n}", "op": "upsert", "version": 1, "text": f"text {n}", "ignored": b"\xff"}
            for n in range(6)]
    rows[1]["title"] = b"a title in bytes"
    rows[3]["fields"] = [(1, "one")]
    rows[4]["event_time"] = 10**14
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, tmp_path / "items.parquet", row_group_size=4)
    store_path = tmp_path / "store"
    manifest = run_backfill(str(tmp_path / "items.parquet"), str(tiny_bundle), str(store_path), log=quiet)
    assert_landed(store_path, manifest, ["p0", "p2", "p5"])
    assert (manifest.counts.read, manifest.counts.written, manifest.counts.dead_lettered) == (6, 3, 3)
    assert_counts_add_up(manifest.counts)
    letters = {letter.source: letter for letter in EmbeddingStore.open(store_path).dead_letters.list(manifest.job_id)}
    path = tmp_path / "items.parquet"
    assert {source: letter.reason.split(":")[:2] for source, letter in letters.items()} == {
        f"{path}:row 2": ["cannot convert row", " TypeError"],
        f"{path}:row 4": ["cannot convert row", " TypeError"],
        f"{path}:row 5": ["cannot convert row", " OverflowError"],
    }
    assert "bytes is not JSON serializable" in letters[f"{path}:row 2"].reason
    assert letters[f"{path}:row 4"].reason.endswith("fields keys must be strings, got int")
    assert all(f'"p{n - 1}"'.encode() in letters[f"{path}:row {n}"].raw for n in (2, 4, 5))  # Arrow's text


def test_an_item_the_encoder_fails_on_alone_is_a_dead_letter(tiny_bundle, tmp_path, monkeypatch):
    """Faked: no real input makes the tiny encoder fail for one item (validation bounds the text, the byte-level
    tokenizer takes any string), so ``tokenize`` is patched to refuse texts holding a marker."""
    tokenize = ItemEncoder.tokenize

    def refusing(self, items):
        if any("UNTOKENIZABLE" in text for _title, text in items):
            raise ValueError("cannot tokenize this text\nmore detail")
        return tokenize(self, items)

    monkeypatch.setattr(ItemEncoder, "tokenize", refusing)
    events = [valid_event(0), valid_event(1), ItemEvent("bad", "upsert", 1, "T", "UNTOKENIZABLE text"),
              valid_event(2)]
    catalog = tmp_path / "events.jsonl"
    catalog.write_bytes(b"".join(event.to_json().encode() + b"\n" for event in events))
    store_path = tmp_path / "store"
    manifest = run_backfill(str(catalog), str(tiny_bundle), str(store_path), log=quiet)
    assert_landed(store_path, manifest, ["ok-0", "ok-1", "ok-2"])
    c = manifest.counts
    assert (c.read, c.encoded, c.written, c.dead_lettered) == (4, 3, 3, 1)
    assert_counts_add_up(c)
    [letter] = EmbeddingStore.open(store_path).dead_letters.list(manifest.job_id)
    assert (letter.source, letter.reason) == (f"{catalog}:3", "encoding failed: ValueError: cannot tokenize this text")
    assert letter.raw == events[2].to_json().encode()


class _Exhausted:
    """Faked: an encoder out of memory, which no test machine can be made to be on demand."""

    def encode_events(self, events, **_kwargs):
        raise MemoryError()


def test_running_out_of_memory_fails_the_job_instead_of_dead_lettering():
    handler = ItemEncoderHandler("unused", job_id="j")
    batch = [ParsedEvent(valid_event(0), "f:1"), ParsedEvent(valid_event(1), "f:2")]
    with pytest.raises(MemoryError):
        list(handler.run_inference(batch, _Exhausted()))


def test_an_unforeseen_parse_error_is_a_dead_letter(monkeypatch):
    """Faked: once the decoder is safe no real input makes parsing raise anything but ValidationError."""
    def broken(_data, **_kwargs):
        raise KeyError("item_id")

    monkeypatch.setattr("mixlm.pipelines.transforms.parse_item_event", broken)
    [outcome] = ParseEvents().process(RawEvent(b'{"item_id": "a"}', "t/0@5", position=KafkaPosition("t", 0, 5)))
    assert outcome.kind == DEAD and outcome.dead_letter.reason == "cannot parse: KeyError: 'item_id'"
    assert (outcome.dead_letter.source, outcome.position.offset) == ("t/0@5", 5)


def test_a_reader_stops_between_lines_when_stop_is_set(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"a\nb\n")
    try:
        STOP.set("SIGTERM")
        assert list(_ReadLines(False, 0).process(str(path))) == []
    finally:
        STOP.configure(max_seconds=None, max_records=None)
    assert [raw.source for raw in _ReadLines(False, 0).process(str(path))] == [f"{path}:1", f"{path}:2"]
