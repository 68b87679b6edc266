import numpy as np
import pytest
import torch

from mixlm.encoders import ItemEncoder, to_record
from mixlm.schemas import ItemEvent

from .conftest import ITEMS


@pytest.fixture(scope="module")
def encoder(tiny_bundle):
    return ItemEncoder.from_bundle(tiny_bundle)


def test_shapes_dtypes_and_normalised_retrieval_vectors(encoder):
    out = encoder.encode(ITEMS)
    assert len(out) == len(ITEMS)
    for item in out:
        assert item.vectors.shape == (1, 64) and item.vectors.dtype == np.float32
        assert item.retrieval_vector.shape == (48,) and item.retrieval_vector.dtype == np.float32
        assert np.linalg.norm(item.retrieval_vector) == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(out[0].vectors, out[1].vectors)
    assert encoder.device.type == "cpu" and encoder.dtype == torch.float32  # no CUDA here: CPU float32


@pytest.mark.parametrize("bundle_fixture", ["tiny_bundle", "bert_bundle", "last_k_bundle"])
def test_vectors_do_not_depend_on_the_batch(request, bundle_fixture):
    bundle = request.getfixturevalue(bundle_fixture)
    runs = [
        [ItemEncoder.from_bundle(bundle).encode([item])[0] for item in ITEMS],  # alone: no padding
        ItemEncoder.from_bundle(bundle).encode(ITEMS),  # one batch, padded to the longest
        ItemEncoder.from_bundle(bundle, token_budget=60).encode(ITEMS),  # other batches, other padding
        ItemEncoder.from_bundle(bundle).encode(ITEMS[::-1])[::-1],  # another order
    ]
    for run in runs[1:]:
        for a, b in zip(runs[0], run, strict=True):
            np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5, rtol=0)
            np.testing.assert_allclose(a.retrieval_vector, b.retrieval_vector, atol=1e-5, rtol=0)


def test_last_k_and_encoder_only_shapes(last_k_bundle, bert_bundle):
    k4 = ItemEncoder.from_bundle(last_k_bundle).encode(ITEMS[:2])
    assert k4[0].vectors.shape == (4, 64)
    bert = ItemEncoder.from_bundle(bert_bundle).encode(ITEMS[:2])
    assert bert[0].vectors.shape == (1, 64) and bert[0].retrieval_vector.shape == (32,)


def test_truncation_is_recorded(encoder):
    limit = encoder.encoding.max_length
    short, long = encoder.encode([("t", "word " * 5), ("t", "word " * 400)])
    assert not short.truncated and short.source_tokens < limit
    assert long.truncated and long.source_tokens > limit
    # only the first max_length tokens are encoded: text past the cut changes nothing
    longer = encoder.encode([("t", "word " * 400 + "tail " * 50)])[0]
    assert longer.source_tokens > long.source_tokens
    np.testing.assert_allclose(long.vectors, longer.vectors, atol=1e-5, rtol=0)


def test_deterministic(encoder):
    first, second = encoder.encode(ITEMS), encoder.encode(ITEMS)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.vectors, b.vectors)


def test_dtype_override(tiny_bundle, encoder):
    bf16 = ItemEncoder.from_bundle(tiny_bundle, dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    a, b = bf16.encode(ITEMS[:1])[0], encoder.encode(ITEMS[:1])[0]
    assert a.vectors.dtype == np.float32
    np.testing.assert_allclose(a.vectors, b.vectors, atol=0.1)
    with pytest.raises(ValueError, match="dtype must be one of"):
        ItemEncoder.from_bundle(tiny_bundle, dtype="int8")


def test_any_model_folder_without_a_bundle(tiny_bundle):
    plain = ItemEncoder.from_model_dir(tiny_bundle / "encoder", pooling="mean", max_length=64)
    out = plain.encode(ITEMS[:2])
    assert out[0].vectors.shape == (1, 48)  # no projection: the model's own width
    np.testing.assert_allclose(out[0].vectors[0] / np.linalg.norm(out[0].vectors[0]), out[0].retrieval_vector,
                               atol=1e-5)  # mean pooling, before projection, is the retrieval vector
    assert plain.encoder_id.startswith("enc-")


def test_records_from_events(encoder):
    events = [ItemEvent("a", "upsert", 7, "Data engineer", "Kafka"), ItemEvent("b", "upsert", 2, "", "Nurse")]
    records = encoder.encode_events(events, job_id="bf-x", encoded_at=5.0)
    assert [r.item_id for r in records] == ["a", "b"]
    first = records[0]
    assert first.item_version == 7 and first.content_hash == events[0].content_hash()
    assert first.encoder_id == encoder.encoder_id and first.job_id == "bf-x" and first.encoded_at == 5.0
    assert first.n_tokens == 1 and first.dim == 64 and not first.truncated
    np.testing.assert_allclose(first.vectors, encoder.encode([("Data engineer", "Kafka")])[0].vectors, atol=1e-5)


def test_a_delete_has_no_record_to_encode(encoder):
    item = encoder.encode(ITEMS[:1])[0]
    with pytest.raises(ValueError, match="tombstone"):
        to_record(ItemEvent("a", "delete", 3), item, encoder.encoder_id)
