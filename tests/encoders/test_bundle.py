import dataclasses
import json
import shutil

import numpy as np
import pytest
from transformers import AutoTokenizer

from mixlm.encoders import BundleConfig, ItemEncoder, PromptTemplate, init_bundle, load_bundle
from mixlm.encoders.bundle import answer_token_ids

from .conftest import ITEMS


def test_layout_is_safetensors_only(tiny_bundle):
    files = [p for p in tiny_bundle.rglob("*") if p.is_file()]
    suffixes = {p.suffix for p in files}
    assert {"encoder", "ranker"} <= {p.name for p in tiny_bundle.iterdir()}
    assert (tiny_bundle / "projection.safetensors").is_file() and (tiny_bundle / "mixlm.json").is_file()
    for part in ("encoder", "ranker"):
        names = {p.name for p in (tiny_bundle / part).iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not suffixes & {".bin", ".pt", ".pth", ".pkl", ".ckpt"}
    assert not [p for p in tiny_bundle.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_mixlm_json_holds_the_contract(tiny_bundle):
    data = json.loads((tiny_bundle / "mixlm.json").read_text())
    assert data["format"] == 1 and data["encoder_id"].startswith("enc-")
    assert data["encoder"] == {"base": "tiny-llama-48", "kind": "decoder", "hidden_size": 48}
    assert data["ranker"] == {"base": "tiny-llama-64", "kind": "decoder", "hidden_size": 64}
    assert data["encoding"] == {"pooling": "last", "n_tokens": 1, "max_length": 128, "item_template": "{title}\n{text}"}
    assert data["projection"] == {"kind": "linear", "in_dim": 48, "out_dim": 64}
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bundle / "ranker"))
    assert tokenizer.decode([data["prompt"]["yes_token_id"]]) == " yes"
    assert tokenizer.decode([data["prompt"]["no_token_id"]]) == " no"
    assert BundleConfig.from_dict(data).to_dict() == data


def test_load_is_lazy_and_parts_load(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    assert "encoder_tokenizer" not in vars(bundle)
    assert bundle.load_ranker().config.hidden_size == 64
    assert bundle.load_encoder().config.hidden_size == 48
    assert bundle.load_projection().weight.shape == (64, 48)
    assert bundle.ranker_tokenizer is bundle.ranker_tokenizer


def test_save_load_round_trip_gives_identical_vectors(tiny_bundle, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(tiny_bundle, moved)
    first, second = ItemEncoder.from_bundle(tiny_bundle), ItemEncoder.from_bundle(moved)
    assert first.encoder_id == second.encoder_id == load_bundle(moved).fingerprint()
    for a, b in zip(first.encode(ITEMS), second.encode(ITEMS), strict=True):
        np.testing.assert_array_equal(a.vectors, b.vectors)
        np.testing.assert_array_equal(a.retrieval_vector, b.retrieval_vector)


def test_init_bundle_from_local_model_folders(tiny_bundle, bert_bundle, tmp_path):
    # BERT encoder (width 32) + Llama ranker (width 64): projection defaults to linear, pooling to mean
    bundle = init_bundle(tmp_path / "b", bert_bundle / "encoder", tiny_bundle / "ranker", max_length=64, seed=5)
    assert bundle.config.encoder.kind == "encoder-only" and bundle.config.encoding.pooling == "mean"
    assert bundle.config.projection.kind == "linear"
    # same widths: identity, with an empty projection file
    same = init_bundle(tmp_path / "same", tiny_bundle / "ranker", tiny_bundle / "ranker", n_tokens=2)
    assert same.config.projection.kind == "identity" and same.config.encoding.pooling == "last_k"
    assert ItemEncoder.from_bundle(same.path).encode(ITEMS[:1])[0].vectors.shape == (2, 64)


def test_init_bundle_refusals(tiny_bundle, bert_bundle, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        init_bundle(tmp_path / "full", tiny_bundle / "encoder", tiny_bundle / "ranker")
    with pytest.raises(ValueError, match="ranker must be a causal LM"):
        init_bundle(tmp_path / "a", tiny_bundle / "encoder", bert_bundle / "encoder")
    with pytest.raises(ValueError, match="exceeds the encoder's 512 positions"):
        init_bundle(tmp_path / "b", bert_bundle / "encoder", tiny_bundle / "ranker", max_length=1024)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        init_bundle(tmp_path / "c", tmp_path, tiny_bundle / "ranker")
    with pytest.raises(ValueError, match="is not a fast tokenizer|one token each"):
        init_bundle(tmp_path / "d", tiny_bundle / "encoder", tiny_bundle / "ranker",
                    prompt=PromptTemplate(yes=" absolutely-certainly"))
    assert not any(p.name.startswith(".") or p.name in "abcd" for p in tmp_path.iterdir())  # nothing half-built


def test_answers_must_be_single_distinct_tokens(tiny_bundle):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bundle / "ranker"))
    with pytest.raises(ValueError, match="splits the answer ' absolutely-certainly' into .* one token each"):
        answer_token_ids(tokenizer, PromptTemplate(yes=" absolutely-certainly"))
    with pytest.raises(ValueError, match="same token"):
        answer_token_ids(tokenizer, PromptTemplate(yes=" no"))
    prompt = answer_token_ids(tokenizer, PromptTemplate(yes="yes", no="no"))
    assert prompt.yes_token_id != prompt.no_token_id


def test_broken_bundles_are_clear_errors(tiny_bundle, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model bundle"):
        load_bundle(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    (broken / "projection.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="projection.safetensors is missing"):
        load_bundle(broken)
    data = json.loads((tiny_bundle / "mixlm.json").read_text())
    for change, message in (({"format": 9}, "format 9"), ({"extra": 1}, "unknown keys extra"),
                            ({"encoding": {**data["encoding"], "pooling": "max"}}, "pooling must be one of"),
                            ({"projection": {**data["projection"], "out_dim": 65}}, "ranker width 64")):
        (broken / "mixlm.json").write_text(json.dumps({**data, **change}))
        with pytest.raises(ValueError, match=message):
            load_bundle(broken)


def test_prompt_template_needs_the_query_slot():
    with pytest.raises(ValueError, match="{query}"):
        dataclasses.replace(PromptTemplate(), instruction="Query:")
