"""Dependencies: what the lifespan hung on `app.state`, handed to routes.

All `async def`: FastAPI runs a plain `def` dependency in its thread pool, a thread hand-off per
request for a dictionary lookup.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from visinspect.config import Settings
from visinspect.services.drift import DriftService
from visinspect.services.heads import HeadService
from visinspect.services.health import ReadinessService
from visinspect.services.history import HistoryService
from visinspect.services.images import ImageService
from visinspect.services.labels import LabelService
from visinspect.services.predict import PredictService
from visinspect.services.reviews import ReviewService
from visinspect.startup import Services


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_predict_service(request: Request) -> PredictService:
    return _services(request).predict


async def get_history_service(request: Request) -> HistoryService:
    return _services(request).history


async def get_review_service(request: Request) -> ReviewService:
    return _services(request).reviews


async def get_drift_service(request: Request) -> DriftService:
    return _services(request).drift


async def get_image_service(request: Request) -> ImageService:
    return _services(request).images


async def get_label_service(request: Request) -> LabelService:
    return _services(request).labels


async def get_head_service(request: Request) -> HeadService:
    return _services(request).heads


async def get_readiness_service(request: Request) -> ReadinessService:
    return _services(request).readiness


SettingsDep = Annotated[Settings, Depends(get_settings)]
PredictServiceDep = Annotated[PredictService, Depends(get_predict_service)]
HistoryServiceDep = Annotated[HistoryService, Depends(get_history_service)]
ReviewServiceDep = Annotated[ReviewService, Depends(get_review_service)]
DriftServiceDep = Annotated[DriftService, Depends(get_drift_service)]
ImageServiceDep = Annotated[ImageService, Depends(get_image_service)]
LabelServiceDep = Annotated[LabelService, Depends(get_label_service)]
HeadServiceDep = Annotated[HeadService, Depends(get_head_service)]
ReadinessServiceDep = Annotated[ReadinessService, Depends(get_readiness_service)]
