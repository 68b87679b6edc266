"""The encoder LLM: item text -> embedding tokens (built in the encoder issue)."""
