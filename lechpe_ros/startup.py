"""Start-up of the ``lechpe_pose`` node: model file, backend, detector, estimator.

Kept apart from the node so the errors (and their wording) are testable
without ROS; every failure is a :class:`StartupError` whose text says what
and how to fix it.
"""

from __future__ import annotations

from pathlib import Path

#: How users get weights; appended to every model loading error.
HOW_TO_GET_WEIGHTS = (
    "To obtain weights: leave model_path empty to use the default model shipped in "
    "lechpe_model/assets (reinstall the package if it is missing), train one with "
    "`lechpe-train` (docs/RESULTS.md), or export a trained checkpoint to ONNX with "
    "`lechpe-export` and pass that file."
)


class StartupError(RuntimeError):
    """The node cannot start (model, detector); the text says what and how to fix it."""


def resolve_model_path(model_path: str) -> Path:
    """The model file to load: ``model_path`` or the embedded default model.

    Raises:
        StartupError: the file does not exist (names the path and how to get weights).
    """
    if model_path:
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise StartupError(f"model file not found: {path}. {HOW_TO_GET_WEIGHTS}")
        return path
    try:
        from lechpe_model.default_model import default_model_path

        path = Path(default_model_path())
    except Exception as exc:  # ImportError or the asset's own error
        raise StartupError(
            f"no model_path given and the default model is unavailable ({exc}). {HOW_TO_GET_WEIGHTS}"
        ) from exc
    if not path.is_file():
        raise StartupError(
            f"no model_path given and the default model is missing at {path}. {HOW_TO_GET_WEIGHTS}"
        )
    return path


def build_estimator(values: dict):
    """Detector + backend + PoseEstimator from the node parameters.

    Returns:
        ``(estimator, backend, detector, model_path)``.

    Raises:
        StartupError: naming the model path / detector and what to do.
    """
    from lechpe_model.backends import BackendUnavailable, create_backend
    from lechpe_model.detection import create_detector
    from lechpe_model.pipeline import PoseEstimator

    model_path = resolve_model_path(values["model_path"])
    # Backends ignore the options that do not concern them.
    options = {
        "precision": values["tensorrt_precision"],
        "onnx_precision": values["onnx_precision"],
        "force_rebuild": values["force_engine_rebuild"],
    }
    if values["engine_cache_dir"]:
        options["cache_dir"] = values["engine_cache_dir"]
    try:
        backend = create_backend(values["backend"], model_path, device=values["device"], **options)
    except BackendUnavailable as exc:  # device/runtime, not the weights: no weights hint
        raise StartupError(
            f"cannot use backend {values['backend']!r} on device {values['device']!r}: {exc}"
        ) from exc
    except Exception as exc:  # CheckpointError, ORT/torch load errors
        raise StartupError(
            f"cannot load model {model_path} with backend {values['backend']!r}: "
            f"{type(exc).__name__}: {exc}. {HOW_TO_GET_WEIGHTS}"
        ) from exc
    try:
        detector = create_detector(
            values["detector"],
            score_threshold=values["detection_threshold"],
            model_path=values["detector_model_path"] or None,
            max_input_side=values["max_detection_side"] or None,
        )
    except Exception as exc:
        raise StartupError(f"cannot create face detector {values['detector']!r}: {exc}") from exc
    estimator = PoseEstimator(
        detector=detector,
        backend=backend,
        max_faces=values["max_faces"],
        detect_every=values["detect_every"],
        track_max_misses=values["track_max_misses"],
        track_min_confidence=values["track_min_confidence"],
        derotate_above_deg=values["derotate_above_deg"],
    )
    try:  # first-call allocations / autotuning now, not on the first camera frame
        backend.warmup()
    except Exception as exc:
        raise StartupError(
            f"model {model_path} fails on a test input: {exc}. {HOW_TO_GET_WEIGHTS}"
        ) from exc
    return estimator, backend, detector, model_path
