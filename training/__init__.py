"""Training of the paired encoder and ranker, and evaluation (built in the training issue)."""
