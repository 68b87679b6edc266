"""The mixed-input ranker and its client (built in the ranker issue)."""
