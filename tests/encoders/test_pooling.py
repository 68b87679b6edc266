import pytest
import torch

from mixlm.encoders.pooling import last_positions, pool

LENGTHS, WIDTH, HIDDEN = [5, 2, 7, 1], 7, 3


def padded_mask(lengths, width, side):
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        if side == "right":
            mask[row, :n] = 1
        else:
            mask[row, width - n:] = 1
    return mask


def position_states(batch, width, hidden):
    """hidden[b, j] = j everywhere, so pooled values read back as positions."""
    return torch.arange(width, dtype=torch.float).view(1, width, 1).expand(batch, width, hidden).clone()


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize(("strategy", "n_tokens"), [("last", 1), ("last_k", 3), ("mean", 1)])
def test_every_strategy_picks_the_real_tokens_on_either_padding_side(side, strategy, n_tokens):
    mask = padded_mask(LENGTHS, WIDTH, side)
    pooled = pool(position_states(len(LENGTHS), WIDTH, HIDDEN), mask, strategy, n_tokens)
    assert pooled.shape == (len(LENGTHS), n_tokens, HIDDEN)
    for row, n in enumerate(LENGTHS):
        real = mask[row].nonzero().flatten().tolist()
        if strategy == "last":
            expected = [real[-1]]
        elif strategy == "last_k":
            expected = ([real[0]] * (n_tokens - n) + real)[-n_tokens:]  # short rows repeat their first token
        else:
            expected = [sum(real) / n]
        assert pooled[row, :, 0].tolist() == pytest.approx(expected)


def test_left_and_right_padding_pool_the_same_states():
    torch.manual_seed(0)
    rows = [torch.randn(n, HIDDEN) for n in LENGTHS]
    for strategy, n_tokens in (("last", 1), ("last_k", 4), ("mean", 1)):
        results = []
        for side in ("left", "right"):
            mask = padded_mask(LENGTHS, WIDTH, side)
            states = torch.zeros(len(LENGTHS), WIDTH, HIDDEN)
            for row, values in enumerate(rows):
                states[row, mask[row].bool()] = values
            results.append(pool(states, mask, strategy, n_tokens))
        torch.testing.assert_close(results[0], results[1])


def test_last_positions_in_order():
    mask = torch.tensor([[0, 1, 1, 0, 1, 1]])  # holes in the mask are skipped too
    assert last_positions(mask, 3).tolist() == [[2, 4, 5]]


def test_mean_is_float32_for_bfloat16_states():
    states = torch.randn(2, 4, 8).to(torch.bfloat16)
    assert pool(states, torch.ones(2, 4, dtype=torch.long), "mean").dtype == torch.float32


@pytest.mark.parametrize(("strategy", "n_tokens", "message"), [
    ("last", 2, "one embedding token"), ("mean", 4, "one embedding token"), ("max", 1, "pooling must be one of")])
def test_bad_combinations_are_refused(strategy, n_tokens, message):
    with pytest.raises(ValueError, match=message):
        pool(torch.zeros(1, 4, 2), torch.ones(1, 4, dtype=torch.long), strategy, n_tokens)


def test_a_row_without_tokens_is_refused():
    with pytest.raises(ValueError, match="without tokens"):
        pool(torch.zeros(2, 3, 2), torch.tensor([[1, 1, 0], [0, 0, 0]]), "last")
