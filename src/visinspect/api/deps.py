"""Dependencies: the long-lived parts the lifespan hung on `app.state`, handed to routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from visinspect.config import Settings
from visinspect.db.session import Database
from visinspect.db.writer import PredictionWriter
from visinspect.inference.runner import InferenceRunner


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def get_runner(request: Request) -> InferenceRunner:
    runner: InferenceRunner = request.app.state.runner
    return runner


def get_writer(request: Request) -> PredictionWriter:
    writer: PredictionWriter = request.app.state.writer
    return writer


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
RunnerDep = Annotated[InferenceRunner, Depends(get_runner)]
WriterDep = Annotated[PredictionWriter, Depends(get_writer)]
