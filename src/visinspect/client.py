"""A typed Python client for the service, built on httpx.

    from visinspect.client import Client
    with Client("http://127.0.0.1:8000", api_key="...") as client:
        result = client.predict("coffee.png")
        print(result.predictions[0].class_name)

Every non-2xx answer raises `ServiceError` with the service's error code and message.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import httpx

from visinspect.api.schemas import (
    BatchOut,
    DriftOut,
    HeadOut,
    LabelOut,
    LabelSetOut,
    LabelSetQualityOut,
    PredictionOut,
    PredictionPage,
    QualityOut,
    QueuePage,
    ReadinessOut,
    ReviewOut,
    StatsOut,
)


class ServiceError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class Client:
    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def predict(
        self, image: Path | str | bytes, top_k: int | None = None, label_set: str | None = None
    ) -> PredictionOut:
        """The top-k, and the active heads' answers (`label_set`: that set's only)."""
        name, data = _read(image)
        params = _params(top_k=top_k, label_set=label_set)
        response = self._http.post("/predict", files={"file": (name, data)}, params=params)
        return PredictionOut.model_validate(_ok(response))

    def predict_batch(self, images: list[Path | str | bytes], top_k: int | None = None) -> BatchOut:
        files = [("files", _read(image)) for image in images]
        response = self._http.post("/predict/batch", files=files, params=_params(top_k=top_k))
        return BatchOut.model_validate(_ok(response))

    def predictions(
        self,
        class_name: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 20,
        offset: int = 0,
        reviewed: bool | None = None,
        max_confidence: float | None = None,
        cursor: str | None = None,
    ) -> PredictionPage:
        """A page of the history; `reviewed=False` is the review queue, least confident first.
        The next page: the same call with `cursor=page.next_cursor` (and no offset)."""
        params = _params(
            cursor=cursor,
            class_name=class_name,
            created_after=created_after.isoformat() if created_after else None,
            created_before=created_before.isoformat() if created_before else None,
            limit=limit,
            offset=offset,
            reviewed=None if reviewed is None else str(reviewed).lower(),
            max_confidence=max_confidence,
        )
        return PredictionPage.model_validate(_ok(self._http.get("/predictions", params=params)))

    def review(
        self,
        prediction_id: int,
        verdict: Literal["correct", "wrong"],
        true_class_id: int | None = None,
        note: str | None = None,
    ) -> ReviewOut:
        body = _params(verdict=verdict, true_class_id=true_class_id, note=note)
        response = self._http.post(f"/predictions/{prediction_id}/review", json=body)
        return ReviewOut.model_validate(_ok(response))

    def quality(
        self,
        class_name: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> QualityOut:
        params = _params(
            class_name=class_name,
            created_after=created_after.isoformat() if created_after else None,
            created_before=created_before.isoformat() if created_before else None,
        )
        return QualityOut.model_validate(_ok(self._http.get("/predictions/quality", params=params)))

    def prediction(self, prediction_id: int) -> PredictionOut:
        return PredictionOut.model_validate(_ok(self._http.get(f"/predictions/{prediction_id}")))

    def image(self, prediction_id: int, thumbnail: bool = False) -> bytes:
        """The kept upload of a prediction (or its JPEG thumbnail); ServiceError 404
        `image_not_kept` when the server keeps no image for it."""
        params = {"variant": "thumbnail"} if thumbnail else {}
        response = self._http.get(f"/predictions/{prediction_id}/image", params=params)
        if not response.is_success:
            _ok(response)  # raises ServiceError with the server's code and message
        return response.content

    def stats(self, class_name: str | None = None) -> StatsOut:
        response = self._http.get("/predictions/stats", params=_params(class_name=class_name))
        return StatsOut.model_validate(_ok(response))

    def drift(self, window: str | None = None, reference: str | None = None) -> DriftOut:
        """The recent `window` (e.g. "24h") against the `reference` before it (e.g. "7d")."""
        params = _params(window=window, reference=reference)
        return DriftOut.model_validate(_ok(self._http.get("/predictions/drift", params=params)))

    # --- teaching ------------------------------------------------------------------------

    def create_label_set(
        self, name: str, classes: list[str], description: str | None = None
    ) -> LabelSetOut:
        body = _params(name=name, classes=classes, description=description)
        return LabelSetOut.model_validate(_ok(self._http.post("/label-sets", json=body)))

    def label_sets(self) -> list[LabelSetOut]:
        """Every label set: the pages the server's `Link` headers lead through."""
        found: list[LabelSetOut] = []
        response = self._http.get("/label-sets", params={"limit": 500})
        while True:
            found += [LabelSetOut.model_validate(s) for s in _ok(response)]
            following = response.links.get("next")
            if following is None:
                return found
            response = self._http.get(following["url"])

    def label_set(self, name: str) -> LabelSetOut:
        return LabelSetOut.model_validate(_ok(self._http.get(f"/label-sets/{name}")))

    def add_classes(self, name: str, classes: list[str]) -> LabelSetOut:
        response = self._http.post(f"/label-sets/{name}/classes", json={"classes": classes})
        return LabelSetOut.model_validate(_ok(response))

    def label(self, prediction_id: int, label_set: str, class_name: str) -> LabelOut:
        body = {"label_set": label_set, "class": class_name}
        response = self._http.post(f"/predictions/{prediction_id}/labels", json=body)
        return LabelOut.model_validate(_ok(response))

    def train_head(self, label_set: str) -> HeadOut:
        """Train the set's next head version (a candidate); it takes seconds."""
        return HeadOut.model_validate(_ok(self._http.post(f"/label-sets/{label_set}/heads")))

    def heads(self, label_set: str) -> list[HeadOut]:
        return [
            HeadOut.model_validate(h) for h in _ok(self._http.get(f"/label-sets/{label_set}/heads"))
        ]

    def train_detector(
        self,
        label_set: str,
        good_class: str = "ok",
        prediction_ids: list[int] | None = None,
        false_reject: float | None = None,
    ) -> HeadOut:
        """Train the set's next detector version (a candidate) on the kept images of
        `prediction_ids`, or of the predictions labelled `good_class`; it takes seconds."""
        body = _params(
            good_class=good_class, prediction_ids=prediction_ids, false_reject=false_reject
        )
        response = self._http.post(f"/label-sets/{label_set}/detectors", json=body)
        return HeadOut.model_validate(_ok(response))

    def detectors(self, label_set: str) -> list[HeadOut]:
        response = self._http.get(f"/label-sets/{label_set}/detectors")
        return [HeadOut.model_validate(d) for d in _ok(response)]

    def anomaly_map(self, prediction_id: int, detector_id: int | None = None) -> bytes:
        """The PNG of a detector's heat map on the prediction."""
        params = _params(detector_id=detector_id)
        response = self._http.get(f"/predictions/{prediction_id}/anomaly-map", params=params)
        if not response.is_success:
            _ok(response)  # raises ServiceError
        return response.content

    def change_head(
        self, head_id: int, action: Literal["shadow", "promote", "rollback", "retire"]
    ) -> HeadOut:
        return HeadOut.model_validate(_ok(self._http.post(f"/heads/{head_id}/{action}")))

    def head_quality(self, label_set: str) -> LabelSetQualityOut:
        response = self._http.get(f"/label-sets/{label_set}/quality")
        return LabelSetQualityOut.model_validate(_ok(response))

    def needs_a_person(
        self, label_set: str, limit: int = 20, cursor: str | None = None
    ) -> QueuePage:
        params = _params(limit=limit, cursor=cursor)
        response = self._http.get(f"/label-sets/{label_set}/queue", params=params)
        return QueuePage.model_validate(_ok(response))

    def health(self) -> ReadinessOut:
        """Readiness, whether ready (200) or not (503): the body says which check failed."""
        return ReadinessOut.model_validate(self._http.get("/health").json())


def _read(image: Path | str | bytes) -> tuple[str, bytes]:
    if isinstance(image, bytes):
        return "upload", image
    path = Path(image)
    return path.name, path.read_bytes()


def _params(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _ok(response: httpx.Response) -> Any:
    if response.is_success:
        return response.json()
    try:
        error = response.json()["error"]
        code, message = error["code"], error["message"]
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:300]
    raise ServiceError(response.status_code, code, message)
