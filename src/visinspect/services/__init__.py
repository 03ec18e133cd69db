"""The service layer: the use cases, between the API (HTTP) and the parts (inference, database).

`predictions.PredictionService` classifies an upload and records it; `history.HistoryService`
reads the records back. Both are built once, at start-up (`visinspect.startup.open_services`), and
used alike by the HTTP routes and by `visinspect classify` in-process. Nothing here imports FastAPI.
"""
