"""GET /predictions/{id}/image: a prediction's kept upload, or its thumbnail (`variant=thumbnail`).

The file is streamed from the store in chunks, off the event loop (`services/images.py`). Its content type is the one
of the format the decoder found (never the client's claim), `nosniff` and a `default-src 'none'`
policy come with every API answer, and the body is content-addressed: the ETag is its digest.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.responses import StreamingResponse

from visinspect.api.deps import ImageServiceDep
from visinspect.api.params import PredictionId
from visinspect.api.schemas import error_responses
from visinspect.api.security import require_api_key

router = APIRouter(tags=["predictions"], dependencies=[Depends(require_api_key)])


@router.get(
    "/predictions/{prediction_id}/image",
    summary="The kept image of a prediction, or its thumbnail (when IMAGE_STORE_DIR is set)",
    response_class=Response,
    responses={
        200: {
            "description": "The image as uploaded (its own format), or a JPEG thumbnail",
            "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
        },
        304: {"description": "If-None-Match names this image: the client's copy is current"},
        **error_responses(401, 403, 404, 422, 503),
    },
)
async def prediction_image(
    images: ImageServiceDep,
    prediction_id: PredictionId,
    variant: Annotated[
        Literal["original", "thumbnail"],
        Query(description="`original` (as uploaded) or `thumbnail` (a small JPEG)"),
    ] = "original",
    if_none_match: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    image = await images.open(prediction_id, variant)
    headers = {
        "ETag": image.etag,
        # Private: the store may hold what only key holders may see. The bytes never change.
        "Cache-Control": "private, max-age=86400",
        "Content-Disposition": f'inline; filename="{image.filename}"',
    }
    if if_none_match is not None and image.etag in {t.strip() for t in if_none_match.split(",")}:
        image.close()
        return Response(status_code=304, headers=headers)
    headers["Content-Length"] = str(image.size)
    return StreamingResponse(image.chunks(), media_type=image.media_type, headers=headers)
