"""Domain errors. Each has a stable machine-readable `code`; `api/errors.py` maps them to HTTP.

The layers below the API raise these and never import FastAPI.
"""

from __future__ import annotations


class VisinspectError(Exception):
    """Base class: `code` is stable for clients, the message is for humans."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidImage(VisinspectError):
    """The upload cannot be classified; the client must send something else."""


class EmptyImage(InvalidImage):
    code = "empty_file"


class NotAnImage(InvalidImage):
    code = "not_an_image"


class UnsupportedImageFormat(InvalidImage):
    code = "unsupported_image_format"


class AnimatedImage(InvalidImage):
    code = "animated_image_not_supported"


class CorruptImage(InvalidImage):
    code = "corrupt_image"


class ImageTooLarge(InvalidImage):
    """More pixels than MAX_IMAGE_PIXELS: the decompression-bomb guard."""

    code = "image_too_many_pixels"


class DatabaseUnavailable(VisinspectError):
    """The database cannot be reached or refused the statement; nothing was stored."""

    code = "database_unavailable"


class PredictionNotFound(VisinspectError):
    code = "prediction_not_found"


class InvalidTimeRange(VisinspectError):
    code = "invalid_time_range"


class Overloaded(VisinspectError):
    """The inference queue is full, or the service is stopping: retry later."""

    code = "overloaded"


class RequestTimedOut(VisinspectError):
    """Classification took longer than REQUEST_TIMEOUT_S; nothing was stored."""

    code = "timeout"


class MissingApiKey(VisinspectError):
    code = "missing_api_key"


class InvalidApiKey(VisinspectError):
    code = "invalid_api_key"


class TooManyFiles(VisinspectError):
    code = "too_many_files"
