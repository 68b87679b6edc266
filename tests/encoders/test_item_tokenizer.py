import pytest
from tokenizers import processors
from transformers import AutoTokenizer

from mixlm.encoders.item_tokenizer import ItemTokenizer

TEXTS = ["word " * 300, "short", "Title\n" + "the quick brown fox " * 40, ""]


@pytest.fixture()
def with_specials(tiny_bundle):
    """The tiny tokenizer with BERT-style framing: <s> ... </s>."""
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bundle / "encoder"))
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    return tokenizer


@pytest.mark.parametrize("framed", [False, True])
def test_same_ids_as_transformers_truncation_and_exact_source_counts(tiny_bundle, with_specials, framed):
    tokenizer = with_specials if framed else AutoTokenizer.from_pretrained(str(tiny_bundle / "encoder"))
    items = ItemTokenizer(tokenizer, max_length=32)(TEXTS)
    expected = tokenizer(TEXTS, truncation=True, max_length=32)["input_ids"]
    full = tokenizer(TEXTS, verbose=False)["input_ids"]
    for item, ids, whole in zip(items, expected, full, strict=True):
        assert item.ids == ids and item.source_tokens == len(whole)
        assert item.truncated == (len(whole) > 32) and len(item.ids) <= 32
    assert items[0].truncated and not items[1].truncated
    if framed:
        assert items[0].ids[0] == 1 and items[0].ids[-1] == 2  # the cut keeps the special tokens


def test_the_shared_tokenizer_is_left_alone(with_specials):
    ItemTokenizer(with_specials, max_length=16)(TEXTS)
    assert with_specials.backend_tokenizer.truncation is None


def test_max_length_must_leave_room_for_text(with_specials):
    with pytest.raises(ValueError, match="no room"):
        ItemTokenizer(with_specials, max_length=2)
