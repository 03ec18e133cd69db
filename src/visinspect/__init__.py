"""Visual Inspection Service: image classification over HTTP, every prediction recorded."""

import os

# NumPy's BLAS (OpenBLAS) starts a thread per core for a matrix product and leaves them spinning
# after it. In this service, whose parallelism is its inference lanes and decoder processes, they
# ran against both: a detector's patch graph and search took 11.4 ms of CPU an image with them,
# 6.6 ms with one thread (docs/anomaly.md). Set before NumPy is imported; a value set wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.2.0"
