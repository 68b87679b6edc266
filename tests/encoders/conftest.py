"""Tiny bundles beside the shared ``tiny_bundle`` (a Llama encoder, T_S = 1, last-token pooling)."""

import pytest

ITEMS = [("Data engineer", "Streaming pipelines with Kafka and Beam. " * 6), ("Nurse", "Night shifts."),
         ("Scientist", "Protein folding and gene expression in cancer cells. " * 3), ("", "yes"),
         ("Sales manager", "Enterprise accounts in Europe, remote. " * 2)]


@pytest.fixture(scope="session")
def bert_bundle(tmp_path_factory):
    from mixlm.encoders import init_tiny_bundle

    path = tmp_path_factory.mktemp("bundle") / "bert"
    return init_tiny_bundle(path, encoder_kind="encoder-only", pooling="mean").path


@pytest.fixture(scope="session")
def last_k_bundle(tmp_path_factory):
    from mixlm.encoders import init_tiny_bundle

    return init_tiny_bundle(tmp_path_factory.mktemp("bundle") / "k4", n_tokens=4, pooling="last_k").path
