"""Offline model work: export and quantization of the served graph, the PyTorch reference it is
measured against, and the evaluation photographs. Torch lives here; the serving packages never
import this package (the import contracts in pyproject.toml hold them to it)."""
