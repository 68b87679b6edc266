"""Training of the paired encoder and ranker, and evaluation: BEIR loading, losses and NDCG so far."""
