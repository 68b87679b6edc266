"""The mixed-input ranker (query text + injected item embedding tokens) and, next, its client."""
