"""Visual Inspection Service: image classification over HTTP, every prediction recorded."""

__version__ = "0.2.0"
