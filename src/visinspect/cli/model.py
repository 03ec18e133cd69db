"""`visinspect model build | show`: make the artifact the service serves, and say what it is."""

from __future__ import annotations

import argparse
import sys

from visinspect.config import Precision, Settings
from visinspect.inference.artifact import (
    ArtifactError,
    Manifest,
    check_manifest,
    describe,
    read_manifest,
)
from visinspect.inference.classifier import load_labels
from visinspect.inference.weights import ModelLoadError, expected_sha256
from visinspect.offline.photos import TOO_FEW_PHOTOS, PhotoSets, find_photos
from visinspect.offline.quantize import RECIPE_KEYS, Int8Recipe
from visinspect.startup import StartupFailed


def build(settings: Settings, args: argparse.Namespace) -> int:
    """Build MODEL_DIR: fp32, plus int8 when --precision or MODEL_PRECISION asks for it (for
    `auto`, as a candidate); with --if-missing, only when what is there does not match the
    settings (make run calls it before every start)."""
    precisions = {Precision.FP32, settings.model_precision, *(Precision(p) for p in args.precision)}
    photos = find_photos(args.photos)
    if args.if_missing and is_up_to_date(settings, precisions, photos):
        print(f"visinspect: the model artifact in {settings.model_dir} is up to date")
        return 0
    try:
        from visinspect.offline.build import BuildFailed, build_artifact
    except ImportError as exc:
        raise StartupFailed(
            "model",
            f"building the model needs PyTorch and ONNX: {exc}",
            "install the `model` extra: pip install 'visual-inspection-service[model]'",
        ) from exc
    try:
        manifest = build_artifact(settings, precisions, photos, args.accept_low_agreement)
    except (BuildFailed, ModelLoadError) as exc:
        raise StartupFailed("model", str(exc), exc.action) from exc
    print(_summary(manifest))
    return 0


def show(settings: Settings, _args: argparse.Namespace) -> int:
    try:
        print(describe(read_manifest(settings.model_dir)))
    except ArtifactError as exc:
        print(f"visinspect: {exc}; {exc.action}", file=sys.stderr)
        return 1
    return 0


def is_up_to_date(
    settings: Settings, precisions: set[Precision], photos: PhotoSets | None = None
) -> bool:
    """MODEL_DIR serves `precisions` for these weights as this release builds them: an int8
    graph made by another recipe is stale (an upgrade brings the better graph), and so, given the
    `photos` a build would use, is an int8 skipped for lack of photographs that are there now
    (`make photos` after a first `make run`)."""
    try:
        manifest = read_manifest(settings.model_dir)
        check_manifest(manifest, settings.model_arch, expected_sha256(settings), load_labels())
    except (ArtifactError, ModelLoadError):
        return False
    patches = manifest.patches
    if patches is None or patches.frame != settings.anomaly_frame_px:
        return False  # built before detectors, or for another ANOMALY_FRAME_PX
    if patches.int8_similarity is None:
        return False  # built before the int8 patch graph was tried
    offered = set(manifest.graphs) | {c.precision for c in manifest.selection.candidates}
    if Precision.AUTO in precisions and Precision.INT8 not in offered:
        return False  # auto tries int8: built, or recorded as not built with its reason
    if not precisions - {Precision.AUTO} <= set(manifest.graphs):
        return False
    if photos is not None and photos.measure_int8 and _int8_lacked_photos(manifest):
        return False
    return not _int8_of_another_recipe(manifest)


def _int8_lacked_photos(manifest: Manifest) -> bool:
    return any(
        c.precision is Precision.INT8 and TOO_FEW_PHOTOS in c.note
        for c in manifest.selection.candidates
    )


def _int8_of_another_recipe(manifest: Manifest) -> bool:
    int8 = manifest.graphs.get(Precision.INT8)
    if int8 is None:
        return False
    recorded = {k: v for k, v in (int8.quantization or {}).items() if k in RECIPE_KEYS}
    return recorded != Int8Recipe().describe()


def _summary(manifest: Manifest) -> str:
    lines = [
        f"model artifact: {manifest.model_name}, weights sha256:{manifest.weights_sha256[:16]}"
    ]
    for precision, graph in sorted(manifest.graphs.items()):
        a = graph.agreement
        lines.append(
            f"  {precision.value}: {graph.file} ({graph.bytes / 1e6:.1f} MB), top-1 agreement "
            f"{a.top1_agree}/{a.photos} ({a.top1_agreement:.1%}), max |Δ confidence| "
            f"{a.max_abs_confidence_diff:.2g}, meets its bar: {'yes' if a.meets_bar else 'NO'}"
        )
    for c in manifest.selection.candidates:
        if c.ms_per_image_batch8 is not None:
            kernels = f", {c.kernels} kernels" if c.kernels else ""
            lines.append(
                f"  {c.precision.value}{kernels}: {c.ms_per_image_batch1:.2f}/"
                f"{c.ms_per_image_batch8:.2f} ms per image at batch 1/8"
            )
    lines.append(f"MODEL_PRECISION=auto serves {manifest.selection.summary()}")
    return "\n".join(lines)
