"""What the world sees: request and response models, with the examples shown at /docs.

Pydantic only: the typed client (`visinspect.client`) imports these without FastAPI or SQLAlchemy.
A stored prediction converts by attribute names (`from_attributes`), whatever object holds it; a
stored review too, with the model's labels in the validation context to name its true class.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationInfo,
    model_validator,
)

_PREDICTIONS_EXAMPLE: list[JsonValue] = [
    {"class_id": 967, "class_name": "espresso", "confidence": 0.9512},
    {"class_id": 968, "class_name": "cup", "confidence": 0.0152},
    {"class_id": 925, "class_name": "consomme", "confidence": 0.0071},
]


class ClassLabel(BaseModel):
    class_id: int = Field(ge=0, le=999, description="ImageNet-1k class index")
    class_name: str = Field(examples=["espresso"])


class ClassScore(BaseModel):
    class_id: int = Field(ge=0, le=999, description="ImageNet-1k class index")
    class_name: str = Field(description="Human-readable ImageNet name", examples=["espresso"])
    confidence: float = Field(ge=0.0, le=1.0, description="Softmax probability over 1000 classes")


_REVIEW_EXAMPLE: dict[str, JsonValue] = {
    "id": 7,
    "prediction_id": 42,
    "created_at": "2026-12-01T19:02:11.5Z",
    "verdict": "wrong",
    "predicted_class_id": 967,
    "true_class_id": 968,
    "true_class_name": "cup",
    "note": "an empty cup, no coffee in it",
    "reviewer": "alice",
}


class ReviewIn(BaseModel):
    """A person's verdict on one prediction."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"verdict": "correct"},
                {"verdict": "wrong", "true_class_id": 968, "note": "an empty cup"},
            ]
        },
    )

    verdict: Literal["correct", "wrong"]
    true_class_id: int | None = Field(
        default=None,
        ge=0,
        le=999,
        description="The class the image shows: required for `wrong`; for `correct` it may only "
        "repeat the predicted class",
    )
    note: str | None = Field(default=None, max_length=2000)


class ReviewOut(BaseModel):
    """A stored review. The latest review of a prediction is the one that counts."""

    model_config = ConfigDict(
        from_attributes=True, json_schema_extra={"examples": [_REVIEW_EXAMPLE]}
    )

    id: int
    prediction_id: int
    created_at: datetime
    verdict: Literal["correct", "wrong"]
    predicted_class_id: int = Field(description="The prediction's top-1 class")
    true_class_id: int = Field(description="The class the image shows, by the reviewer")
    true_class_name: str
    note: str | None
    reviewer: str | None = Field(description="The API key's name; null when keys are off")

    @model_validator(mode="before")
    @classmethod
    def _name_the_true_class(cls, data: Any, info: ValidationInfo) -> Any:
        """A stored review holds the class's id; `context={"labels": ...}` names it."""
        labels = (info.context or {}).get("labels")
        if labels is None or isinstance(data, dict):
            return data
        fields = {
            name: getattr(data, name) for name in cls.model_fields if name != "true_class_name"
        }
        return fields | {"true_class_name": labels[data.true_class_id]}


class PredictionOut(BaseModel):
    """A stored prediction. A 200 from POST /predict means this row is committed."""

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": 42,
                    "created_at": "2026-11-24T18:00:00.123456Z",
                    "request_id": "3f1c9a6e0c8e4d4bb3d5b8d1b0a2e7f1",
                    "model_name": "efficientnet_lite0",
                    "model_version": "sha256:579344248a93e230",
                    "backend": "onnxruntime",
                    "precision": "fp32",
                    "predictions": _PREDICTIONS_EXAMPLE,
                    "image_sha256": "2b7e1510b2f6a3c0a0f8a8f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1",
                    "image_width": 400,
                    "image_height": 300,
                    "image_format": "PNG",
                    "filename": "coffee.png",
                    "latency_ms": 21.4,
                    "decode_ms": 6.2,
                    "inference_ms": 13.9,
                    "image_kept": True,
                }
            ]
        },
    )

    id: int
    created_at: datetime = Field(description="When the prediction was made (UTC)")
    request_id: str = Field(description="Same as the X-Request-ID response header")
    model_name: str = Field(description="Architecture that produced the prediction")
    model_version: str = Field(description="sha256 prefix of the exact weights file used")
    backend: str = Field(description="Runtime that executed the network: onnxruntime or pytorch")
    precision: str = Field(description="Numeric precision of the graph that answered: fp32 or int8")
    predictions: list[ClassScore] = Field(description="Top-k classes, most confident first")
    image_sha256: str
    image_width: int = Field(description="Width after EXIF orientation")
    image_height: int
    image_format: str
    filename: str | None = Field(description="Name the client gave the upload, if any")
    latency_ms: float = Field(description="Decode, preprocessing and inference time on the server")
    decode_ms: float | None = Field(
        default=None,
        description="Of which decoding and preprocessing (null for rows before release 0.2.0)",
    )
    inference_ms: float | None = Field(
        default=None,
        description="Of which the wait for the model and the forward pass (null before 0.2.0)",
    )
    image_kept: bool | None = Field(
        default=None,
        description="Whether the image store kept the upload (GET /predictions/{id}/image): "
        "null when images are not kept, false when the store or its disk was full or failed",
    )
    review: ReviewOut | None = Field(
        default=None,
        description="Its review that counts (the latest), in the history; null when none",
    )
    heads: list[HeadAnswerOut] = Field(
        default_factory=list,
        description="The active heads' answers (a team's own classes), in POST /predict's "
        "answer; `?label_set=` asks for one set's only",
    )
    anomaly: AnomalyOut | None = Field(
        default=None,
        description="An active detector's answer: is the part good, and where is the defect? "
        "The detector of `?label_set=`, or without it the most anomalous answer of the active "
        "detectors; null when no detector is active. The heat map: GET "
        "/predictions/{id}/anomaly-map",
    )
    anomalies: list[AnomalyOut] = Field(
        default_factory=list,
        description="Every active detector's answer (several label sets may have one)",
    )

    @model_validator(mode="before")
    @classmethod
    def _all_it_answered(cls, data: Any) -> Any:
        """A prediction just made answers with every class asked for; its row keeps the first
        STORED_TOP_K (`PredictionRecord.answered`)."""
        answered = getattr(data, "answered", None)
        if not answered:
            return data
        fields = {name: getattr(data, name) for name in cls.model_fields if hasattr(data, name)}
        return fields | {"predictions": answered}


class HeadAnswerOut(BaseModel):
    """A label set's active head on this image: its class, and whether it is sure enough to
    decide without a person (`decided: false`: needs a person)."""

    model_config = ConfigDict(from_attributes=True, populate_by_name=True)

    label_set: str
    version: int
    class_name: str = Field(
        validation_alias=AliasChoices("class", "class_name"), serialization_alias="class"
    )
    confidence: float = Field(ge=0.0, le=1.0, description="Softmax over the set's classes")
    decided: bool = Field(description="confidence reached the class's threshold")


class AnomalyOut(BaseModel):
    """A label set's active detector on this image, learned from good images only."""

    model_config = ConfigDict(from_attributes=True)

    detector: str = Field(description="The label set whose detector answered")
    detector_id: int = Field(description="The detector version's id (POST /heads/{id}/...)")
    version: int
    score: float = Field(
        ge=0.0,
        description="The worst patch's distance to the good patches, in units of the "
        "threshold: 1.0 is the threshold, whatever the product",
    )
    threshold: float = Field(
        default=1.0, description="The score at and above which it is anomalous"
    )
    verdict: Literal["ok", "anomalous"]
    region: list[int] | None = Field(
        description="[x0, y0, x1, y1): the box around the defect, in the uploaded image's own "
        "pixels (after EXIF orientation); null when the verdict is ok"
    )


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable", examples=["corrupt_image"])
    message: str = Field(description="What went wrong and what to do about it")
    request_id: str
    details: list[dict[str, Any]] | None = Field(
        default=None, description="Field-level validation errors, when there are any"
    )


class ErrorResponse(BaseModel):
    """The one error body every route uses."""

    error: ErrorDetail


class BatchItem(BaseModel):
    filename: str | None
    status: int = Field(description="What /predict would have answered for this file alone")
    prediction: PredictionOut | None = None
    error: ErrorDetail | None = None


class BatchOut(BaseModel):
    items: list[BatchItem] = Field(description="One per file, in the order sent")
    succeeded: int
    failed: int


class ClassCount(BaseModel):
    class_name: str
    count: int


class DayCount(BaseModel):
    day: date = Field(description="UTC calendar day")
    count: int


class StatsOut(BaseModel):
    total: int
    by_class: list[ClassCount] = Field(description="Top-1 classes, most frequent first")
    by_day: list[DayCount] = Field(description="Predictions per UTC day, oldest first")


class PredictionPage(BaseModel):
    items: list[PredictionOut]
    total: int = Field(
        description="Rows matching the filters, over all pages: exact up to 10,000; beyond, "
        "10,000 with `total_exact` false (counting further would read every matching row)"
    )
    total_exact: bool = Field(
        default=True, description='false: there are more than `total` rows ("10,000+")'
    )
    next_cursor: str | None = Field(
        default=None,
        description="Pass it as `cursor` (with the same filters) for the next page; null on the "
        "last page. Every page costs the same, however deep",
    )
    limit: int
    offset: int


class AccuracyOut(BaseModel):
    reviewed: int = Field(description="Predictions with a review (their latest counts)")
    correct: int
    accuracy: float | None = Field(description="correct / reviewed; null without reviews")


class ClassAccuracy(AccuracyOut):
    class_name: str = Field(description="The predicted top-1 class")


class DayAccuracy(AccuracyOut):
    day: date = Field(description="UTC day of the predictions")


class ConfusionOut(BaseModel):
    predicted_class_id: int
    predicted_class_name: str
    true_class_id: int
    true_class_name: str
    count: int = Field(description="Predictions of this class reviewed as showing the true one")


class QualityOut(BaseModel):
    """Accuracy measured by people's reviews of the predictions that match the filters."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "overall": {"reviewed": 120, "correct": 103, "accuracy": 0.8583333333333333},
                    "by_class": [
                        {"class_name": "espresso", "reviewed": 40, "correct": 38, "accuracy": 0.95}
                    ],
                    "by_day": [
                        {
                            "day": "2026-12-01",
                            "reviewed": 120,
                            "correct": 103,
                            "accuracy": 0.8583333333333333,
                        }
                    ],
                    "confusions": [
                        {
                            "predicted_class_id": 967,
                            "predicted_class_name": "espresso",
                            "true_class_id": 968,
                            "true_class_name": "cup",
                            "count": 2,
                        }
                    ],
                }
            ]
        }
    )

    overall: AccuracyOut
    by_class: list[ClassAccuracy] = Field(description="Per predicted class, most reviewed first")
    by_day: list[DayAccuracy] = Field(description="Per UTC day, oldest first")
    confusions: list[ConfusionOut] = Field(description="Predicted -> true, most frequent first")


class ClassShiftOut(BaseModel):
    class_name: str
    recent_share: float = Field(description="Share of the recent window's predictions")
    reference_share: float
    change: float = Field(description="recent_share - reference_share")


class DriftOut(BaseModel):
    """The recent window's predictions against the reference window just before it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "recent_start": "2026-11-30T19:00:00Z",
                    "recent_end": "2026-12-01T19:00:00Z",
                    "reference_start": "2026-11-23T19:00:00Z",
                    "recent_count": 8400,
                    "reference_count": 61000,
                    "class_js_distance": 0.21,
                    "confidence_ks": 0.04,
                    "confidence_p_value": 0.0003,
                    "recent_mean_confidence": 0.71,
                    "reference_mean_confidence": 0.74,
                    "moved": [
                        {
                            "class_name": "cup",
                            "recent_share": 0.18,
                            "reference_share": 0.02,
                            "change": 0.16,
                        }
                    ],
                    "drifted": True,
                    "reason": "classes: Jensen-Shannon distance 0.210 >= 0.1",
                }
            ]
        }
    )

    recent_start: datetime
    recent_end: datetime
    reference_start: datetime = Field(description="The reference ends where the recent begins")
    recent_count: int
    reference_count: int
    class_js_distance: float | None = Field(
        description="Jensen-Shannon distance (base 2) of the top-1 class distributions, 0..1"
    )
    confidence_ks: float | None = Field(
        description="Two-sample Kolmogorov-Smirnov statistic of the confidences (at 0.01 steps)"
    )
    confidence_p_value: float | None = Field(description="Its asymptotic p-value")
    recent_mean_confidence: float | None
    reference_mean_confidence: float | None
    moved: list[ClassShiftOut] = Field(description="The classes whose share moved most")
    drifted: bool | None = Field(description="null: a window holds too few predictions to say")
    reason: str


class CheckResult(BaseModel):
    status: Literal["ok", "fail"]
    detail: str | None = None


class ReadinessOut(BaseModel):
    status: Literal["ready", "not_ready"]
    failing: list[str] = Field(description="Names of the failed checks; empty when ready")
    checks: dict[str, CheckResult] = Field(description="model, database, schema")
    model_name: str | None = None
    model_version: str | None = None
    backend: str | None = None
    precision: str | None = None
    schema_revision: str | None = None


class LivenessOut(BaseModel):
    status: Literal["alive"] = "alive"


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries that document our error body for the given statuses."""
    descriptions = {
        400: "The upload is empty",
        401: "API keys are configured and the request has none",
        403: "The API key is not valid",
        404: "No such prediction (`prediction_not_found`), label set (`label_set_not_found`) "
        "or head (`head_not_found`), or the image is not kept (`image_not_kept`)",
        409: "Another request changed the head's status meanwhile (`head_changed_meanwhile`: "
        "look again, then retry), or this set is being trained (`training_in_progress`)",
        413: "Body over MAX_UPLOAD_BYTES, or image over MAX_IMAGE_PIXELS",
        500: "A fault of the service (the request id finds it in the logs); nothing was stored",
        501: "This install cannot train heads (`training_unavailable`): scikit-learn, the "
        "`model` extra, is not installed; train with `visinspect head train` where it is",
        415: "Not an image, an unsupported format, or an animated image",
        422: "Invalid parameters, missing `file` field, a truncated/corrupt image, or a review "
        "that contradicts itself or names an unknown class; for teaching, a class the label "
        "set does not have, too few labels per class (`too_few_labels`), or embeddings of "
        "another base model (`base_model_differs`)",
        503: "Database unavailable or inference queue full, or HEAD_TRAIN_CONCURRENCY trainings "
        "running (`training_busy`); nothing was stored. Retry later.",
        504: "Classification exceeded REQUEST_TIMEOUT_S; nothing was stored.",
    }
    return {
        status: {"model": ErrorResponse, "description": descriptions[status]} for status in statuses
    }


# --- teaching --------------------------------------------------------------------------------

_CLASS = Field(validation_alias=AliasChoices("class", "class_name"), serialization_alias="class")


class LabelSetIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "parts",
                    "classes": ["ok", "scratch", "dent"],
                    "description": "Stamped brackets, line 2",
                }
            ]
        },
    )

    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    classes: list[str] = Field(min_length=2, max_length=1000)
    description: str | None = Field(default=None, max_length=2000)


class ClassesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    classes: list[str] = Field(min_length=1, max_length=1000, description="Appended, in order")


class LabelSetOut(BaseModel):
    name: str
    description: str | None
    classes: list[str] = Field(description="In the order they were added; never renamed")
    counts: dict[str, int] = Field(description="Predictions per class, by their latest label")
    labelled: int
    created_at: datetime
    created_by: str | None


class LabelIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={"examples": [{"label_set": "parts", "class": "scratch"}]},
    )

    label_set: str = Field(max_length=64)
    class_name: str = Field(
        max_length=64,
        validation_alias=AliasChoices("class", "class_name"),
        serialization_alias="class",
    )


class LabelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, populate_by_name=True)

    id: int
    prediction_id: int
    label_set: str
    class_name: str = _CLASS
    labeller: str | None = Field(description="The API key's name; null when keys are off")
    created_at: datetime


class HeadOut(BaseModel):
    """One trained version of a label set's head: a classifier, or a detector."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    label_set: str
    kind: Literal["classifier", "detector"] = Field(
        default="classifier",
        description="classifier: the set's classes from the embedding; detector: good or "
        "anomalous from the whole frame's patches, learned from good images only",
    )
    version: int
    status: Literal["candidate", "shadow", "active", "retired"]
    classes: list[str]
    base_model_version: str
    artifact_sha256: str
    labels_until: int = Field(description="The newest label it was trained on")
    trained_at: datetime
    trained_by: str | None
    metrics: dict[str, Any] = Field(
        description="A classifier's, cross-validated: accuracy, macro_f1, per_class "
        "(precision, recall, threshold), confusion, decided_share and decided_precision at the "
        "target precision. A detector's: method, frame, grid, threshold (the raw distance a "
        "score of 1.0 stands for), patch_graph_sha256"
    )
    training: dict[str, Any] = Field(
        description="A classifier's rows, their ids' sha256, seconds; a detector's good "
        "images, refused files, bank size, held-out scores, seconds"
    )
    libraries: dict[str, str] = Field(default_factory=dict)


class HeadEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    head_id: int
    kind: Literal["classifier", "detector"] = "classifier"
    action: str
    from_status: str | None
    to_status: str
    replaced_head_id: int | None
    actor: str | None
    created_at: datetime


class VersionQualityOut(BaseModel):
    """A version on the labels given after it was trained (that it answered)."""

    head_id: int
    version: int
    status: str
    labels: int
    correct: int
    accuracy: float | None
    macro_f1: float | None
    decided: int = Field(description="Answers at or above their class's threshold")
    decided_share: float | None
    decided_precision: float | None = Field(description="Correct among the decided answers")
    beats_active: bool | None = Field(
        description="Shadow versions: more accurate than the active one on the labels both "
        "answered (at least HEAD_COMPARE_MIN_LABELS of them); null otherwise"
    )


class DetectorQualityOut(BaseModel):
    """A detector version on the labels given after it was trained (that it answered): a label
    of its good class is a good part, any other class a defective one."""

    head_id: int
    version: int
    status: str
    good: int = Field(description="Labelled good parts it answered")
    false_rejects: int = Field(description="Of which it called anomalous")
    false_reject_rate: float | None
    defective: int = Field(description="Labelled defective parts it answered")
    escapes: int = Field(description="Of which it called ok")
    escape_rate: float | None


class LabelSetQualityOut(BaseModel):
    label_set: str
    compare_min_labels: int
    versions: list[VersionQualityOut]
    detectors: list[DetectorQualityOut] = Field(default_factory=list)


class DetectorTrainIn(BaseModel):
    """What a detector learns as good: the kept images of the predictions named, or (without
    them) of the newest predictions whose latest label in the set is `good_class`."""

    model_config = ConfigDict(extra="forbid")

    good_class: str = Field(
        default="ok",
        min_length=1,
        max_length=64,
        description="The set's class of good parts: its labels are the good images, and "
        "quality counts every other class as defective",
    )
    prediction_ids: list[Annotated[int, Field(ge=1, le=2**63 - 1)]] = Field(
        default_factory=list,
        max_length=1000,
        description="Train on these predictions' kept images instead (all of them good parts)",
    )
    false_reject: float = Field(
        default=0.01,
        ge=0.0001,
        le=0.5,
        description="The share of good parts the threshold may call anomalous, set on good "
        "images the bank did not see",
    )


class QueueItemOut(BaseModel):
    prediction_id: int
    head_version: int
    class_name: str = _CLASS
    confidence: float
    created_at: datetime


class AnomalyItemOut(BaseModel):
    prediction_id: int
    detector_version: int
    score: float = Field(description="1.0 is the threshold")
    region: list[int] | None
    created_at: datetime


class AnomalyPage(BaseModel):
    items: list[AnomalyItemOut]
    next_cursor: str | None


class QueuePage(BaseModel):
    items: list[QueueItemOut]
    next_cursor: str | None
