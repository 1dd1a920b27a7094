"""Face detectors behind one interface, and the factory that builds them by name.

======================  ===============================  ===========================
name                    what                             where
======================  ===============================  ===========================
``blazeface``           MediaPipe BlazeFace short range  anywhere ONNX Runtime runs;
                        (ONNX shipped, 6 keypoints)      ONNX also for TensorRT
``blazeface_full``      BlazeFace full range (faces up   same
                        to ~5 m, 192 px input)
``blazeface_occluded``  full range fine-tuned on         same
                        occluded renders (opt-in)
``yuface``              libfacedetection YuNet, weights  x86_64 (the ``yuface`` wheel)
                        inside the wheel, 5 landmarks
``yunet``               OpenCV ``cv2.FaceDetectorYN``     anywhere OpenCV runs (Jetson);
                        with a YuNet ONNX file you pass   needs ``model_path``
``haar``                OpenCV Haar cascade (frontal)    everywhere with opencv < 5;
                                                         no landmarks, weak on profiles
======================  ===============================  ===========================

Modules: :mod:`.base` (the box type :class:`FaceDetection`, the interface
:class:`FaceDetector`, :func:`keep_largest`), one module per detector
(:mod:`.blazeface`, :mod:`.yunet`, :mod:`.haar`) and the factory
:func:`create_detector` here. Every public name is importable from
``lechpe_model.detection``.

``create_detector()`` builds :data:`DEFAULT_DETECTOR` (chosen from the detector
benchmark, docs/BENCHMARKS.md); ``create_detector("auto")`` picks the first
usable one in the order :data:`AUTO_ORDER` and logs which.

Crop calibration
----------------
Detector boxes have another extent than the 68-landmark box the training
crops are made from (``lechpe_model.preprocessing``): YuNet's box includes the
forehead, Haar's box is a square from the brows to above the chin, BlazeFace's
spans the brows to the chin. Each detector therefore carries ``crop_margin``
and ``crop_shift_y``: with them ``expand_box(det_box, crop_margin,
shift_y=crop_shift_y)`` gives a square of the same side and centre as
``expand_box(landmark_box, TEST_MARGIN)``. The values were measured on
scikit-image's ``astronaut`` photo (one frontal face; ``test/test_detection.py``
checks the overlap) and can be overridden by the pipeline's ``margin``/``shift_y``.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from lechpe_model.detection.base import (
    DEFAULT_MAX_INPUT_SIDE,
    DEFAULT_SCORE_THRESHOLD,
    HAAR_MAX_INPUT_SIDE,
    LOG,
    DetectorUnavailable,
    FaceDetection,
    FaceDetector,
    keep_largest,
)
from lechpe_model.detection.blazeface import BLAZEFACE_CROP, BLAZEFACE_MODELS, BlazeFaceDetector
from lechpe_model.detection.combined import CombinedDetector
from lechpe_model.detection.haar import HaarDetector
from lechpe_model.detection.yunet import (
    OpenCVYuNetDetector,
    YuFaceDetector,
    _bundled_omp_setter,
    _FacedetectCnn,
    _from_yunet_rows,
)

__all__ = [
    "AUTO_ORDER",
    "BLAZEFACE_CROP",
    "BLAZEFACE_CROP_FULL",
    "DEFAULT_DETECTOR",
    "DEFAULT_MAX_INPUT_SIDE",
    "DEFAULT_SCORE_THRESHOLD",
    "DETECTOR_NAMES",
    "HAAR_MAX_INPUT_SIDE",
    "BlazeFaceDetector",
    "CombinedDetector",
    "DetectorUnavailable",
    "FaceDetection",
    "FaceDetector",
    "HaarDetector",
    "OpenCVYuNetDetector",
    "YuFaceDetector",
    "_FacedetectCnn",
    "_bundled_omp_setter",
    "_from_yunet_rows",
    "create_detector",
    "keep_largest",
]

#: crop margin / shift of BlazeFace full range (the default detector)
BLAZEFACE_CROP_FULL = BLAZEFACE_CROP["blazeface_full"]
#: Detector names accepted by :func:`create_detector` (besides ``"auto"``).
DETECTOR_NAMES = ("blazeface", "blazeface_full", "blazeface_occluded", "yuface", "yunet", "haar")
#: What :func:`create_detector` builds without a name (see docs/BENCHMARKS.md).
DEFAULT_DETECTOR = "blazeface_full"
#: ``"auto"`` tries these in order (yunet only with a model file).
AUTO_ORDER = ("blazeface_full", "yuface", "yunet", "haar")


def _build(name: str, model_path, kwargs: dict, strict: bool) -> FaceDetector:
    """One detector by name; ``strict``: options it does not take are an error."""
    if name in BLAZEFACE_MODELS:
        cls, args = BlazeFaceDetector, {"variant": name, "model_path": model_path}
    elif name == "yuface":
        cls, args = YuFaceDetector, {}
    elif name == "yunet":
        cls, args = OpenCVYuNetDetector, {"model_path": model_path}
    else:
        cls, args = HaarDetector, {}
    if strict:
        accepted = set()
        for klass in cls.__mro__:
            if "__init__" in vars(klass):
                accepted |= set(inspect.signature(klass.__init__).parameters)
        unknown = sorted(k for k, v in kwargs.items() if k not in accepted and v is not None)
        if unknown:
            raise ValueError(
                f"detector {name!r} does not take option(s) {', '.join(unknown)}; it takes "
                f"{', '.join(sorted(accepted - {'self', 'kwargs', 'ignored', 'variant'}))}"
            )
        if model_path and name in ("yuface", "haar"):
            raise ValueError(f"detector {name!r} takes no model file (got {str(model_path)!r})")
    return cls(**args, **kwargs)


def create_detector(
    name: str = DEFAULT_DETECTOR,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    model_path: str | Path | None = None,
    max_input_side: int | None = None,
    **options,
) -> FaceDetector:
    """Build a detector by name, or the best usable one for ``"auto"``.

    Args:
        name: ``"auto"``, one of :data:`DETECTOR_NAMES` (default :data:`DEFAULT_DETECTOR`),
            or several joined with ``+`` (``"blazeface_full+yuface"``): a
            :class:`CombinedDetector` keeping the faces any of them finds.
        score_threshold: minimum score in [0, 1].
        model_path: ONNX file for ``"yunet"`` (required) or a BlazeFace variant
            (optional, default: the shipped file); ``"auto"`` tries yunet with it.
        max_input_side: frames are downscaled to this longest side for detection
            (``None``: the detector's default, 320 for YuNet, 640 for Haar, none
            for BlazeFace, whose letterbox resizes to its input; 0: never).
        **options: detector-specific (``num_threads`` for yuface and BlazeFace,
            ``nms_threshold`` for BlazeFace and yunet, ``min_neighbors``,
            ``min_size``, ``scale_factor`` for haar). A named detector refuses
            options it does not take; ``"auto"`` ignores them.

    Raises:
        ValueError: unknown name, option or out-of-range value (the message names it).
        DetectorUnavailable: the named detector cannot run (or, for ``"auto"``,
        none can), with the reason.
    """
    if not 0.0 <= float(score_threshold) <= 1.0:
        raise ValueError(f"detector score_threshold must be in [0, 1], got {score_threshold}")
    kwargs = {"score_threshold": score_threshold, "max_input_side": max_input_side, **options}
    name = (name or DEFAULT_DETECTOR).lower()
    if "+" in name:  # a union, e.g. "blazeface_full+yuface"
        parts = [p.strip() for p in name.split("+")]
        unknown = [p for p in parts if p not in DETECTOR_NAMES]
        if unknown or len(set(parts)) != len(parts):
            raise ValueError(
                f"bad combined detector {name!r}: join two or more different names of "
                f"{', '.join(DETECTOR_NAMES)} with '+'"
            )
        members = [
            _build(p, model_path if p in ("yunet",) else None, kwargs, strict=False) for p in parts
        ]
        return CombinedDetector(members)
    if name in DETECTOR_NAMES:
        return _build(name, model_path, kwargs, strict=True)
    if name != "auto":
        raise ValueError(f"unknown detector {name!r}; choose auto, {', '.join(DETECTOR_NAMES)}")
    reasons = []
    for candidate in AUTO_ORDER:
        if candidate == "yunet" and not model_path:
            continue
        try:
            detector = _build(
                candidate, model_path if candidate == "yunet" else None, kwargs, strict=False
            )
        except DetectorUnavailable as exc:
            reasons.append(f"{candidate}: {exc}")
            LOG.info("face detector %s not usable: %s", candidate, exc)
            continue
        LOG.info("face detector 'auto' picked %s", detector.name)
        return detector
    raise DetectorUnavailable("no face detector is usable: " + "; ".join(reasons))
