"""The service layer: the use cases, between the API (HTTP) and the parts (inference, database).

One module per use case, named as its routes are (`api/routes/<x>.py` -> `services/<x>.py`):
`predict` classifies an upload and records it, `history` reads the records back, `reviews` records
people's verdicts and the accuracy they measure, `drift` compares two windows of the stream,
`images` keeps and serves the uploads, `health` says whether this process can serve. Each is built
once, at start-up (`visinspect.startup.open_services`), and used alike by the HTTP routes and by
the CLI in-process. Services hold no SQL (that is `db/repository.py`) and never import FastAPI.
"""
