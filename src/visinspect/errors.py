"""Domain errors. Each has a stable machine-readable `code`; `api/error_handlers.py` maps them to HTTP.

The classes form a hierarchy by what the client should do (send another file, fix the request,
retry later, report a bug), and the HTTP mapping follows the hierarchy: a new subclass answers what
its parent answers. The layers below the API raise these and never import FastAPI.
"""

from __future__ import annotations

import structlog


class VisinspectError(Exception):
    """Base class: `code` is stable for clients, the message is for humans."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- the upload cannot be classified: the client must send something else -------------------------


class InvalidImage(VisinspectError):
    """The bytes are not a usable image (422 unless a subclass says otherwise)."""

    code = "invalid_image"


class EmptyImage(InvalidImage):
    code = "empty_file"


class UnsupportedImage(InvalidImage):
    """Bytes the service will not decode (415)."""

    code = "unsupported_image"


class NotAnImage(UnsupportedImage):
    code = "not_an_image"


class UnsupportedImageFormat(UnsupportedImage):
    code = "unsupported_image_format"


class AnimatedImage(UnsupportedImage):
    code = "animated_image_not_supported"


class CorruptImage(InvalidImage):
    code = "corrupt_image"


class TooManyPixels(InvalidImage):
    """More pixels than MAX_IMAGE_PIXELS: the decompression-bomb guard (413)."""

    code = "image_too_many_pixels"


class ImageNeedsTooMuchMemory(TooManyPixels):
    """Decoding would take more than DECODE_MAX_MEMORY_MB (estimated from the header, or found
    out by the decoder's address-space limit) (413)."""

    code = "image_too_large_to_decode"


class ImageTooSlowToDecode(InvalidImage):
    """Decoding did not finish within DECODE_TIMEOUT_S; the decoder was stopped (422)."""

    code = "image_too_slow_to_decode"


class DecoderCrashed(InvalidImage):
    """The decoder process died on this file (422); a new one took its place."""

    code = "undecodable_image"


# --- the request itself is wrong -------------------------------------------------------------------


class InvalidRequest(VisinspectError):
    """Well-formed HTTP, but parameters the service cannot honour (422)."""

    code = "invalid_request"


class InvalidTimeRange(InvalidRequest):
    code = "invalid_time_range"


class InvalidReview(InvalidRequest):
    """A verdict that contradicts itself: `wrong` without the true class, or naming the
    predicted one; `correct` naming another."""

    code = "invalid_review"


class UnknownClass(InvalidRequest):
    code = "unknown_class"


class InvalidCursor(InvalidRequest):
    code = "invalid_cursor"


class OffsetTooDeep(InvalidRequest):
    """An offset beyond what is cheap to skip: page with the cursor instead."""

    code = "offset_too_deep"


class TooManyFiles(InvalidRequest):
    code = "too_many_files"


class PredictionNotFound(VisinspectError):
    code = "prediction_not_found"


# --- teaching: label sets, labels, heads ---------------------------------------------------------


class InvalidLabelSet(InvalidRequest):
    """A label set or a label the service cannot take: a bad name, a class it does not have, a
    class with labels that would be dropped or renamed (422)."""

    code = "invalid_label_set"


class TooFewLabels(InvalidRequest):
    """Training needs more labels (per class, with kept embeddings) than the set has (422)."""

    code = "too_few_labels"


class TooFewGoodImages(InvalidRequest):
    """A detector needs more readable good images (kept, or in the folder) than it was given
    (422)."""

    code = "too_few_good_images"


class BaseModelDiffers(InvalidRequest):
    """The head was trained on another base model's embeddings than the serving one's (422)."""

    code = "base_model_differs"


class InvalidHeadChange(InvalidRequest):
    """A promotion or rollback that the head's status or history does not allow (422)."""

    code = "invalid_head_change"


class TooManyLabelSets(InvalidRequest):
    """MAX_LABEL_SETS sets exist already (422)."""

    code = "too_many_label_sets"


class Conflict(VisinspectError):
    """The request would have been right a moment ago; another one changed the state (409)."""

    code = "conflict"


class HeadChangedMeanwhile(Conflict):
    """A lifecycle change raced another: the statuses it was decided on changed before it could
    be made under the set's lock. Nothing was changed; look again and retry (409)."""

    code = "head_changed_meanwhile"


class TrainingTooLarge(InvalidRequest):
    """The set's training needed more memory than HEAD_TRAIN_MAX_MEMORY_MB allows (422)."""

    code = "training_too_large"


class TrainingInProgress(Conflict):
    """A training of this label set is running: one at a time per set (409)."""

    code = "training_in_progress"


class LabelSetNotFound(VisinspectError):
    code = "label_set_not_found"


class HeadNotFound(VisinspectError):
    code = "head_not_found"


class AnomalyMapNotFound(VisinspectError):
    """The prediction exists; no active detector kept a heat map of it (404)."""

    code = "anomaly_map_not_found"


class TrainingUnavailable(VisinspectError):
    """This install cannot train heads: scikit-learn (the `model` extra) is not installed (501)."""

    code = "training_unavailable"


class ImageNotKept(VisinspectError):
    """The prediction exists, its image does not: never kept, or removed by the cleanup (404)."""

    code = "image_not_kept"


class MissingApiKey(VisinspectError):
    code = "missing_api_key"


class InvalidApiKey(VisinspectError):
    code = "invalid_api_key"


class InsufficientScope(InvalidApiKey):
    """A valid key without the scope the route needs (a device key that may only predict)."""

    code = "insufficient_scope"


# --- the service cannot do it now; the same request may succeed later -------------------------------


class ServiceUnavailable(VisinspectError):
    """A transient condition: answered 503 with Retry-After (`retry_after_s` when known)."""

    code = "unavailable"

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TrainingBusy(ServiceUnavailable):
    """HEAD_TRAIN_CONCURRENCY trainings are running on this process: try again later (503)."""

    code = "training_busy"


class DatabaseUnavailable(ServiceUnavailable):
    """The database cannot be reached; nothing was stored."""

    code = "database_unavailable"


class DatabaseTooSlow(ServiceUnavailable):
    """A query ran past DATABASE_STATEMENT_TIMEOUT_S and was cancelled; nothing was stored."""

    code = "database_timeout"


class Overloaded(ServiceUnavailable):
    """The inference queue is full, or the service is stopping: retry later."""

    code = "overloaded"


class DeadlineUnreachable(Overloaded):
    """The work already waiting for the model outlasts the request's deadline: refused at once,
    so that the client can retry elsewhere instead of waiting to time out."""

    code = "deadline_unreachable"


class RequestTimedOut(VisinspectError):
    """Classification took longer than REQUEST_TIMEOUT_S; nothing was stored."""

    code = "timeout"


class ClientGone(VisinspectError):
    """The client closed its connection before its image reached the model: the work is dropped
    and nothing is stored (nobody would receive the answer)."""

    code = "client_gone"


# --- our fault: retrying will not help ---------------------------------------------------------------


class RecordNotStored(VisinspectError):
    """The database is up but refused the row (a bug or a schema problem, not an outage): 500.
    The cause stays attached (`__cause__`) for the log line; the client learns nothing internal."""

    code = "internal_error"


# --- start-up: the service cannot run until an operator changes something -------------------------


class StartupFailed(Exception):
    """Raised before a port is opened (`visinspect.startup`, `db/`); `action` says what to do.
    Not a VisinspectError: no request ever sees it."""

    def __init__(self, part: str, reason: str, action: str) -> None:
        super().__init__(f"{part}: {reason}")
        self.part = part
        self.reason = reason
        self.action = action

    def log(self) -> None:
        """The one line every start-up failure ends with."""
        structlog.get_logger("visinspect").error(
            "startup.failed", part=self.part, reason=self.reason, action=self.action
        )
