"""YuNet: libfacedetection through the ``yuface`` wheel, and ``cv2.FaceDetectorYN``."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import cv2
import numpy as np

from lechpe_model.detection.base import (
    DEFAULT_SCORE_THRESHOLD,
    DetectorUnavailable,
    FaceDetection,
    FaceDetector,
)

LOG = logging.getLogger("lechpe_model.detection")


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
