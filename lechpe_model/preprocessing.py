"""The ONE face preprocessing shared by training and inference (NumPy + OpenCV).

Training and every runtime path (torch, ONNX Runtime, TensorRT, the ROS node)
call these functions, so the deployed network sees crops made exactly like the
crops it was trained on.

Crop geometry
-------------
1. A face box ``(x1, y1, x2, y2)`` in pixels comes either from landmarks
   (:func:`box_from_landmarks`: the tight bounding box of the 68 points of
   300W-LP / AFLW2000, brows to chin and jaw side to jaw side) or from a face
   detector (see ``lechpe_model.detection``; detector boxes have another extent
   and get their own calibrated margin there).
2. :func:`expand_box` grows each side by ``margin * size`` and, with
   ``square=True``, makes the box square on its larger side, centred.
   Like Hopenet-style peers we enlarge the landmark box so forehead, ears and
   chin stay in the crop, but symmetrically (Hopenet grows the top more than
   the bottom) so the box centre stays on the landmarks' centre.

   * ``TEST_MARGIN = 0.25``: the fixed margin at test time and at inference:
     the crop side is 1.5x the landmark box side.
   * ``TRAIN_MARGIN_RANGE = (0.15, 0.35)``: training draws the margin
     uniformly from this range (scale jitter centred on the test margin,
     the role of Hopenet's random ``k``).
3. :func:`crop_face` cuts the integer-rounded box out of the frame. Parts of
   the box outside the frame are filled with a constant border (black,
   ``CROP_PAD_VALUE``) instead of shifting or shrinking the box, so a face at
   the frame edge keeps its position and scale inside the crop.
   :func:`rotated_crop` cuts the same box from the image turned about the box
   centre (training's in-plane rotation augmentation, and the runtime's
   upright re-crop of tilted heads, ``PoseEstimator(derotate_above_deg=...)``).
4. :func:`preprocess_crops` converts a list of uint8 BGR crops to the network
   input: BGR -> RGB, ``cv2.resize`` (``INTER_LINEAR``) to ``S x S``, ``/255``,
   ImageNet mean/std, NCHW float32. Training applies its augmentations to the
   uint8 crop *before* calling it.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

#: Side of the square network input in pixels.
INPUT_SIZE = 224
#: ImageNet normalisation, RGB order, for pixel values scaled to [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Fixed fraction of the landmark box size added to each side at test time.
TEST_MARGIN = 0.25
#: Range (low, high) from which training draws the margin uniformly.
TRAIN_MARGIN_RANGE = (0.15, 0.35)
#: Value of the padding that replaces pixels outside the frame (all channels).
CROP_PAD_VALUE = 0


def box_from_landmarks(points: np.ndarray) -> np.ndarray:
    """Tight bounding box of landmarks.

    Args:
        points: ``(N, 2)`` or ``(N, 3)`` pixel coordinates (x, y[, z]);
            non-finite points are ignored.

    Returns:
        ``(4,)`` float32 ``(x1, y1, x2, y2)`` in pixels.

    Raises:
        ValueError: when no finite point is given.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] < 2:
        raise ValueError(f"landmarks must have shape (N, 2) or (N, 3), got {pts.shape}")
    xy = pts[:, :2]
    xy = xy[np.all(np.isfinite(xy), axis=1)]
    if len(xy) == 0:
        raise ValueError("no finite landmark to build a box from")
    x1, y1 = xy.min(axis=0)
    x2, y2 = xy.max(axis=0)
    return np.array([x1, y1, x2, y2], dtype=np.float32)


#: Name used in docs/ARCHITECTURE.md.
crop_box_from_landmarks = box_from_landmarks


def expand_box(
    box: np.ndarray,
    margin: float,
    square: bool = True,
    image_shape: Sequence[int] | None = None,
    shift_y: float = 0.0,
) -> np.ndarray:
    """Enlarge a box by a margin, optionally make it square.

    Args:
        box: ``(4,)`` ``(x1, y1, x2, y2)`` pixels.
        margin: fraction of the box size added to *each* side
            (``0.25`` turns a 100 px box into 150 px).
        square: make the result square on its larger side, keeping the centre.
        image_shape: when given (``(H, W, ...)``), clip the result to the
            image. The default ``None`` keeps the geometry; :func:`crop_face`
            pads what lies outside the frame.
        shift_y: move the centre down by this fraction of the original box
            height before expanding (detector boxes sit higher on the face
            than landmark boxes; see ``lechpe_model.detection``).

    Returns:
        ``(4,)`` float32 ``(x1, y1, x2, y2)``.
    """
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    w, h = max(x2 - x1, 0.0), max(y2 - y1, 0.0)
    cx, cy = 0.5 * (x1 + x2), 0.5 * (y1 + y2) + shift_y * h
    if square:
        w = h = max(w, h)
    w *= 1.0 + 2.0 * margin
    h *= 1.0 + 2.0 * margin
    out = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dtype=np.float64)
    if image_shape is not None:
        height, width = int(image_shape[0]), int(image_shape[1])
        out[[0, 2]] = np.clip(out[[0, 2]], 0, width)
        out[[1, 3]] = np.clip(out[[1, 3]], 0, height)
    return out.astype(np.float32)


def box_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` ``(N, 4)`` with every box in ``b`` ``(M, 4)`` -> ``(N, M)``."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ix = np.clip(
        np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None
    )
    iy = np.clip(
        np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None
    )
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two ``(x1, y1, x2, y2)`` boxes (0 when they do not overlap)."""
    return float(box_iou_matrix(a, b)[0, 0])


def crop_face(image: np.ndarray, box: np.ndarray, pad_value: int = CROP_PAD_VALUE) -> np.ndarray:
    """Cut a box out of an image, padding what lies outside the image.

    The box is rounded to integer pixels (``x1 = round(x1)``, ``x2 = round(x2)``,
    at least 1 px wide and high); rows/columns outside the image are filled
    with ``pad_value`` so the face keeps its place and scale in the crop.

    Args:
        image: ``(H, W, 3)`` uint8 BGR (any (H, W, C) array works).
        box: ``(4,)`` ``(x1, y1, x2, y2)`` pixels, may extend past the image.

    Returns:
        ``(round(y2) - round(y1), round(x2) - round(x1), C)`` array, dtype of ``image``.
    """
    b = np.asarray(box, dtype=np.float64).reshape(4)
    if not np.all(np.isfinite(b)):
        raise ValueError(f"crop box is not finite: {b.tolist()}")
    x1, y1 = int(round(b[0])), int(round(b[1]))
    x2, y2 = max(int(round(b[2])), x1 + 1), max(int(round(b[3])), y1 + 1)
    height, width = image.shape[:2]
    ix1, iy1 = min(max(x1, 0), width), min(max(y1, 0), height)
    ix2, iy2 = min(max(x2, 0), width), min(max(y2, 0), height)
    inside = image[iy1:iy2, ix1:ix2]
    out_shape = (y2 - y1, x2 - x1) + image.shape[2:]
    if inside.shape[:2] == out_shape[:2]:
        return inside.copy()
    out = np.full(out_shape, pad_value, dtype=image.dtype)
    if iy2 > iy1 and ix2 > ix1:
        out[iy1 - y1 : iy2 - y1, ix1 - x1 : ix2 - x1] = inside
    return out


def rotation_affine(box, theta_deg: float) -> np.ndarray:
    """``(2, 3)`` affine: image pixel -> pixel of the crop of ``box`` rotated clockwise by theta.

    The box is rounded like ``crop_face`` (integer corners); the rotation is
    about the centre of the crop's pixel grid, so ``theta = 0`` is exactly
    ``crop_face(image, box)``.  ``cv2.getRotationMatrix2D(centre, -theta, 1)``
    turns the pixels clockwise as seen (OpenCV's positive angle is
    counter-clockwise), the sense of ``conventions.rotate_in_image_plane``.
    """
    b = np.asarray(box, dtype=np.float64).reshape(4)
    x1, y1 = int(round(b[0])), int(round(b[1]))
    x2, y2 = max(int(round(b[2])), x1 + 1), max(int(round(b[3])), y1 + 1)
    centre = (0.5 * (x1 + x2 - 1), 0.5 * (y1 + y2 - 1))
    matrix = cv2.getRotationMatrix2D(centre, -float(theta_deg), 1.0)
    matrix[:, 2] -= (x1, y1)
    return matrix


def rotated_crop(image: np.ndarray, box, theta_deg: float) -> np.ndarray:
    """Crop of ``box`` from the image turned clockwise by ``theta_deg`` about the box centre.

    Pixels from outside the image are ``CROP_PAD_VALUE`` (as ``crop_face``).
    """
    if float(theta_deg) == 0.0:
        return crop_face(image, box)
    b = np.asarray(box, dtype=np.float64).reshape(4)
    x1, y1 = int(round(b[0])), int(round(b[1]))
    w = max(int(round(b[2])), x1 + 1) - x1
    h = max(int(round(b[3])), y1 + 1) - y1
    return cv2.warpAffine(
        image,
        rotation_affine(box, theta_deg),
        (w, h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(CROP_PAD_VALUE,) * 3,
    )


def preprocess_crops(
    crops: Sequence[np.ndarray],
    input_size: int = INPUT_SIZE,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """uint8 BGR face crops -> normalised network batch.

    Args:
        crops: ``N`` arrays ``(h, w, 3)`` uint8 BGR, any size (each non-empty).
        input_size: output side ``S`` in pixels.
        mean, std: per-channel normalisation in RGB order for values in [0, 1].

    Returns:
        ``(N, 3, S, S)`` float32, RGB channel order; ``(0, 3, S, S)`` for no crop.

    Raises:
        ValueError: naming the crop that is not a non-empty uint8 (h, w, 3) array.
    """
    size = int(input_size)
    batch = np.empty((len(crops), size, size, 3), dtype=np.uint8)
    for i, crop in enumerate(crops):
        arr = np.asarray(crop)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
            raise ValueError(
                f"crop {i}: expected a non-empty uint8 (h, w, 3) BGR array, "
                f"got dtype {arr.dtype} shape {arr.shape}"
            )
        resized = cv2.resize(arr, (size, size), interpolation=cv2.INTER_LINEAR)
        batch[i] = resized[:, :, ::-1]  # BGR -> RGB
    # (x / 255 - mean) / std folded into one multiply-add, computed in NCHW order
    # straight from the uint8 pixels (fewer passes over the batch).
    scale = (1.0 / (255.0 * np.asarray(std, dtype=np.float64))).astype(np.float32)
    offset = (-np.asarray(mean, dtype=np.float64) / np.asarray(std, dtype=np.float64)).astype(
        np.float32
    )
    out = np.empty((len(crops), 3, size, size), dtype=np.float32)
    np.multiply(batch.transpose(0, 3, 1, 2), scale.reshape(1, 3, 1, 1), out=out)
    out += offset.reshape(1, 3, 1, 1)
    return out


def preprocess_face(
    image: np.ndarray,
    box: np.ndarray,
    margin: float = TEST_MARGIN,
    input_size: int = INPUT_SIZE,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    shift_y: float = 0.0,
) -> np.ndarray:
    """One face: ``expand_box`` (square) + ``crop_face`` + ``preprocess_crops``.

    Args:
        image: ``(H, W, 3)`` uint8 BGR frame.
        box: ``(4,)`` face box in pixels (a landmark box for ``TEST_MARGIN``).

    Returns:
        ``(1, 3, S, S)`` float32 network input.
    """
    crop_box = expand_box(box, margin, square=True, shift_y=shift_y)
    return preprocess_crops([crop_face(image, crop_box)], input_size, mean, std)
