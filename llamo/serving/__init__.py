"""Serving LLaMo on a stock vLLM engine through prompt embeddings: export, front-end, client, gateway."""
