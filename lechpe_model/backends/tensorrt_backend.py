"""TensorRT backend: engine built on the target from the ONNX, cached on disk.

Engine cache
------------
A serialized engine only runs on the TensorRT version and the GPU model it was
built for (the most common failure reported by users of TensorRT-based ROS
nodes). This backend therefore builds the engine itself, on the machine that
runs it, and caches it under ``<cache_dir>/tensorrt/`` (``cache_dir``
defaults to ``$LECHPE_CACHE_DIR`` or ``~/.cache/lechpe``):

* ``<name>.engine``: the serialized engine, ``<name>`` =
  ``<onnx sha256[:16]>-<precision>-b<max_batch>``;
* ``<name>.json``: the :class:`EngineKey` it was built with: sha256 of the
  ONNX bytes, ``tensorrt.__version__``, GPU name, compute capability,
  precision, max batch.

On start the current key is compared with the stored one
(:func:`rebuild_reason`); any difference (other TensorRT version, other GPU,
changed ONNX, missing or unreadable files) rebuilds the engine and logs why.
``force_rebuild=True`` always rebuilds (Isaac ROS' ``force_engine_update``).

Precision: ``"fp16"`` (default), ``"fp32"`` or ``"int8"``. INT8 needs
``calibration_dir``: a folder of face crops (jpg/png, any size; they are
preprocessed with ``preprocess_crops``), a ``lechpe-synth`` folder with an
``index.csv`` of face boxes, or the ``.npy`` of calibration tensors that
``lechpe-export --int8`` writes (the crops ONNX Runtime's INT8 model was
calibrated on; see ``lechpe_model.quantization``): TensorRT's entropy calibrator
(``IInt8EntropyCalibrator2``) runs over them once and writes a calibration
cache ``<cache_dir>/tensorrt/calib-<onnx sha[:16]>-<crops sha[:12]>.cache``
that later builds reuse.

Device memory: cuda-python (``cuda.bindings.runtime`` / ``cuda.cudart``) when
installed, else torch CUDA tensors. Needs TensorRT >= 8.5 (``execute_async_v3``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lechpe_model.backends import (
    Backend,
    BackendUnavailable,
    default_cache_dir,
    onnx_for_model,
    read_onnx_metadata,
)
from lechpe_model.export import graph_output_names
from lechpe_model.preprocessing import preprocess_crops

LOG = logging.getLogger(__name__)

PRECISIONS = ("fp16", "fp32", "int8")
INPUT_NAME = "image"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

INSTALL_HINT = (
    "install TensorRT's Python package (x86_64: `pip install tensorrt`; Jetson: JetPack's "
    "python3-libnvinfer) on a machine with an NVIDIA GPU, or use backend 'onnxruntime'"
)


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX or build an engine."""


# ----------------------------------------------------------------- cache key (pure)


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on; a change in any field means rebuild."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    max_batch: int

    def digest(self) -> str:
        """Hex sha256 of the key fields (stable JSON)."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def file_stem(self) -> str:
        """Cache file name (without suffix); the same for every TensorRT/GPU, so a
        changed environment overwrites the stale engine instead of piling up files."""
        return f"{self.onnx_sha256[:16]}-{self.precision}-b{self.max_batch}"


_FIELD_WORDS = {
    "onnx_sha256": "ONNX model",
    "tensorrt_version": "TensorRT version",
    "gpu_name": "GPU",
    "compute_capability": "GPU compute capability",
    "precision": "precision",
    "max_batch": "max batch",
}


def rebuild_reason(
    stored: dict | None, current: EngineKey, engine_exists: bool, force: bool = False
) -> str | None:
    """Why the cached engine cannot be used, or ``None`` to reuse it.

    Args:
        stored: the JSON record saved next to the engine (``None`` if absent/unreadable).
        current: the key of this machine and model.
        engine_exists: whether the ``.engine`` file exists.
        force: user asked for a rebuild.
    """
    if force:
        return "rebuild forced (force_rebuild=True)"
    if not engine_exists:
        return "no cached engine"
    if not isinstance(stored, dict):
        return "no readable cache record next to the engine (origin unknown)"
    changes = []
    for name, value in dataclasses.asdict(current).items():
        if stored.get(name) != value:
            changes.append(f"{_FIELD_WORDS[name]} changed: {stored.get(name)!r} -> {value!r}")
    return "; ".join(changes) if changes else None


def engine_paths(cache_dir: str | Path, key: EngineKey) -> tuple[Path, Path]:
    """``(engine file, JSON record)`` for ``key`` under ``cache_dir/tensorrt``."""
    folder = Path(cache_dir) / "tensorrt"
    return folder / f"{key.file_stem()}.engine", folder / f"{key.file_stem()}.json"


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ------------------------------------------------------------------- CUDA helpers


def _cudart():
    """cuda-python's runtime module, or None."""
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6

        return runtime
    except Exception:
        try:
            from cuda import cudart  # older cuda-python

            return cudart
        except Exception:
            return None


def _check(result):
    """cuda-python calls return (error, *values); raise on error, return values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else values


def gpu_identity(device_index: int = 0) -> tuple[str, str] | None:
    """``(GPU name, "major.minor")`` of a CUDA device, or None when none is visible."""
    cudart = _cudart()
    if cudart is not None:
        try:
            count = _check(cudart.cudaGetDeviceCount())
            if count > device_index:
                props = _check(cudart.cudaGetDeviceProperties(device_index))
                name = props.name
                name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
                return name.rstrip("\x00").strip(), f"{props.major}.{props.minor}"
        except Exception as exc:  # no driver, no device
            LOG.debug("cuda-python sees no GPU: %s", exc)
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() > device_index:
            major, minor = torch.cuda.get_device_capability(device_index)
            return torch.cuda.get_device_name(device_index), f"{major}.{minor}"
    except Exception as exc:
        LOG.debug("torch sees no GPU: %s", exc)
    return None


def tensorrt_unavailable_reason(device_index: int = 0) -> str | None:
    """Why the TensorRT backend cannot run here, or ``None`` when it can."""
    try:
        import tensorrt as trt
    except Exception as exc:
        return f"TensorRT is not installed ({type(exc).__name__}: {exc}); {INSTALL_HINT}"
    if not hasattr(trt, "Builder"):
        return (
            f"this TensorRT ({getattr(trt, '__version__', '?')}) is a runtime-only build that "
            f"cannot build engines; {INSTALL_HINT}"
        )
    if gpu_identity(device_index) is None:
        return (
            f"TensorRT {trt.__version__} is installed but no CUDA GPU is visible "
            "(check the NVIDIA driver, CUDA_VISIBLE_DEVICES, and that cuda-python or torch with "
            "CUDA is installed); use backend 'onnxruntime' on CPU-only machines"
        )
    if _cudart() is None:
        try:
            import torch  # noqa: F401
        except Exception:
            return "TensorRT needs cuda-python (pip install cuda-python) or torch for GPU memory"
    return None


class _DeviceBuffers:
    """Device memory + stream through cuda-python, or torch when cuda-python is absent."""

    def __init__(self, device_index: int) -> None:
        self._cudart = _cudart()
        self._device_index = device_index
        self._allocs: list = []
        if self._cudart is not None:
            _check(self._cudart.cudaSetDevice(device_index))
            self.stream = _check(self._cudart.cudaStreamCreate())
            self.stream_handle = int(self.stream)
        else:
            import torch

            self._torch = torch
            self._torch_stream = torch.cuda.Stream(device=device_index)
            self.stream_handle = int(self._torch_stream.cuda_stream)

    def alloc(self, nbytes: int):
        """Device allocation; returns an opaque handle; ``ptr(handle)`` is its address."""
        if self._cudart is not None:
            handle = _check(self._cudart.cudaMalloc(max(int(nbytes), 1)))
        else:
            handle = self._torch.empty(
                max(int(nbytes), 1), dtype=self._torch.uint8, device=f"cuda:{self._device_index}"
            )
        self._allocs.append(handle)
        return handle

    def ptr(self, handle) -> int:
        return int(handle) if self._cudart is not None else int(handle.data_ptr())

    def to_device(self, handle, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        if self._cudart is not None:
            _check(
                self._cudart.cudaMemcpyAsync(
                    self.ptr(handle),
                    array.ctypes.data,
                    array.nbytes,
                    self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                    self.stream,
                )
            )
            # the host array may be freed by the caller: wait for the copy
            _check(self._cudart.cudaStreamSynchronize(self.stream))
        else:
            src = self._torch.from_numpy(array.view(np.uint8).reshape(-1))
            with self._torch.cuda.stream(self._torch_stream):
                handle[: array.nbytes].copy_(src)
            self._torch_stream.synchronize()

    def to_host(self, handle, out: np.ndarray) -> None:
        if self._cudart is not None:
            _check(
                self._cudart.cudaMemcpyAsync(
                    out.ctypes.data,
                    self.ptr(handle),
                    out.nbytes,
                    self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                    self.stream,
                )
            )
            _check(self._cudart.cudaStreamSynchronize(self.stream))
        else:
            self._torch_stream.synchronize()
            out.view(np.uint8).reshape(-1)[:] = handle[: out.nbytes].cpu().numpy()

    def synchronize(self) -> None:
        if self._cudart is not None:
            _check(self._cudart.cudaStreamSynchronize(self.stream))
        else:
            self._torch_stream.synchronize()

    def close(self) -> None:
        if self._cudart is not None:
            for handle in self._allocs:
                self._cudart.cudaFree(handle)
            self._cudart.cudaStreamDestroy(self.stream)
        self._allocs = []


# -------------------------------------------------------------------- calibration


def calibration_files(folder: str | Path) -> list[Path]:
    """Image files of a calibration folder, sorted (deterministic calibration)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"INT8 calibration folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no face crops ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def calibration_batches(files: list[Path], batch_size: int, input_size: int, mean, std):
    """Yield ``(batch_size, 3, S, S)`` float32 batches (last one padded by repetition)."""
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        crops = []
        for path in chunk:
            crop = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if crop is None:
                LOG.warning("calibration: cannot read %s, skipped", path)
                continue
            crops.append(crop)
        if not crops:
            continue
        while len(crops) < batch_size:
            crops.append(crops[len(crops) % max(len(chunk), 1)])
        yield preprocess_crops(crops, input_size, mean, std)


def tensor_batches(tensors: np.ndarray, batch_size: int):
    """Yield ``(batch_size, 3, S, S)`` batches of calibration tensors (last one padded by
    repetition, like :func:`calibration_batches`)."""
    for start in range(0, len(tensors), batch_size):
        chunk = tensors[start : start + batch_size]
        if len(chunk) < batch_size:
            chunk = chunk[np.arange(batch_size) % len(chunk)]
        yield np.ascontiguousarray(chunk, dtype=np.float32)


def calibration_source(source: str | Path, batch_size: int, input_size: int, mean, std):
    """INT8 calibration batches and a digest naming them.

    ``source`` is a ``.npy`` of calibration tensors (``lechpe-export --int8`` writes
    ``<model>.calib.npy``: the same crops ONNX Runtime's INT8 model was calibrated on),
    a folder with a ``lechpe-synth`` ``index.csv`` (faces cropped around their boxes),
    or a folder of face crops.

    Returns:
        ``(batches, sha)``: an iterator of float32 batches and a hex digest used in the
        calibration cache name (the tensors' sha256, or the crop files' names and sizes).
    """
    from lechpe_model.quantization import calibration_tensors, tensors_sha256

    path = Path(source)
    if path.suffix.lower() == ".npy" or (path / "index.csv").is_file():
        tensors = calibration_tensors(path, input_size, mean, std, limit=None)
        return tensor_batches(tensors, batch_size), tensors_sha256(tensors)
    files = calibration_files(path)
    sha = hashlib.sha256("\n".join(f"{p.name}:{p.stat().st_size}" for p in files).encode())
    return calibration_batches(files, batch_size, input_size, mean, std), sha.hexdigest()


def calibration_cache_path(cache_root: str | Path, onnx_sha256: str, crops_sha: str) -> Path:
    """TensorRT's calibration cache for a model and a calibration set."""
    return Path(cache_root) / "tensorrt" / f"calib-{onnx_sha256[:16]}-{crops_sha[:12]}.cache"


def make_entropy_calibrator(trt, batches, batch_size: int, cache_path: Path, buffers, nbytes):
    """An ``IInt8EntropyCalibrator2`` over ``batches``, caching to ``cache_path``."""

    class FolderCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = iter(batches)
            self._device = buffers.alloc(nbytes)

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names):
            try:
                batch = next(self._batches)
            except StopIteration:
                return None
            buffers.to_device(self._device, batch)
            return [buffers.ptr(self._device)]

        def read_calibration_cache(self):
            if cache_path.is_file():
                LOG.info("using INT8 calibration cache %s", cache_path)
                return cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache) -> None:
            _atomic_write(cache_path, bytes(cache))
            LOG.info("wrote INT8 calibration cache %s", cache_path)

    return FolderCalibrator()


# ---------------------------------------------------------------------- building


def build_serialized_engine(
    trt,
    onnx_bytes: bytes,
    input_size: int,
    precision: str = "fp16",
    max_batch: int = 16,
    opt_batch: int = 1,
    workspace_bytes: int = 1 << 30,
    calibrator=None,
    calibration_batch: int = 8,
) -> bytes:
    """Parse the ONNX with ``trt.OnnxParser`` and build a serialized engine.

    The optimisation profile covers batch 1..``max_batch`` (tuned for ``opt_batch``).
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode in 10+
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT cannot parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    shape = (3, int(input_size), int(input_size))
    profile = builder.create_optimization_profile()
    profile.set_shape(
        INPUT_NAME, (1, *shape), (max(1, min(opt_batch, max_batch)), *shape), (max_batch, *shape)
    )
    config.add_optimization_profile(profile)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        if calibrator is None:
            raise EngineBuildError("precision 'int8' needs a calibrator (calibration_dir)")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
        # Calibration runs at one fixed shape: the calibrator's batch size.
        calib_profile = builder.create_optimization_profile()
        fixed = (calibration_batch, *shape)
        calib_profile.set_shape(INPUT_NAME, fixed, fixed, fixed)
        config.set_calibration_profile(calib_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            "TensorRT failed to build the engine (see the TensorRT log above; "
            "try precision='fp32' or a larger workspace)"
        )
    return bytes(serialized)


class TensorRTBackend(Backend):
    """The model as a TensorRT engine built and cached on this machine.

    Args:
        model_path: ``.onnx`` (from ``lechpe-export``) or ``.safetensors`` (exported
            to a cached ONNX first; needs torch + onnx).
        device: ``"auto"``/``"cuda"`` (GPU 0) or ``"cuda:N"``; ``"cpu"`` is refused.
        precision: ``"fp16"`` (default), ``"fp32"`` or ``"int8"``.
        max_batch: largest batch of the optimisation profile (larger batches
            are split); ``opt_batch``: the batch TensorRT tunes for.
        cache_dir: engine/ONNX/calibration cache root.
        force_rebuild: rebuild even if the cached engine matches.
        calibration_dir: folder of face crops for INT8 calibration.
        workspace_mb: builder workspace limit.

    Attributes:
        engine_path: the cached engine file. build_reason: why it was (re)built
        in this run, or ``None`` when the cached engine was reused.
    """

    name = "tensorrt"

    def __init__(
        self,
        model_path: str | Path,
        device: str = "auto",
        precision: str = "fp16",
        max_batch: int = 16,
        opt_batch: int = 1,
        cache_dir: str | Path | None = None,
        force_rebuild: bool = False,
        calibration_dir: str | Path | None = None,
        calibration_batch: int = 8,
        workspace_mb: int = 1024,
        **other,
    ) -> None:
        device = (device or "auto").lower()
        if device == "cpu":
            raise BackendUnavailable("TensorRT runs on NVIDIA GPUs only; use 'onnxruntime' on CPU")
        device_index = int(device.split(":")[1]) if ":" in device else 0
        reason = tensorrt_unavailable_reason(device_index)
        if reason is not None:
            raise BackendUnavailable(reason)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "int8" and calibration_dir is None:
            raise ValueError("precision 'int8' needs calibration_dir (a folder of face crops)")
        if other:
            LOG.debug("tensorrt backend ignores options %s", sorted(other))
        import tensorrt as trt

        self._trt = trt
        cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
        self.onnx_path = onnx_for_model(model_path, cache_root)
        self.metadata = read_onnx_metadata(self.onnx_path)
        self.max_batch = int(max_batch)
        self.device = f"cuda:{device_index}"
        gpu_name, capability = gpu_identity(device_index)
        onnx_bytes = self.onnx_path.read_bytes()
        key = EngineKey(
            onnx_sha256=hashlib.sha256(onnx_bytes).hexdigest(),
            tensorrt_version=str(trt.__version__),
            gpu_name=gpu_name,
            compute_capability=capability,
            precision=precision,
            max_batch=self.max_batch,
        )
        self.key = key
        self.engine_path, self.record_path = engine_paths(cache_root, key)
        self._buffers = _DeviceBuffers(device_index)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))

        self.build_reason = rebuild_reason(
            read_record(self.record_path), key, self.engine_path.is_file(), force_rebuild
        )
        engine = None
        if self.build_reason is None:
            engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if engine is None:
                self.build_reason = "cached engine could not be deserialized"
        if engine is None:
            LOG.warning(
                "building TensorRT %s engine for %s on %s (%s); this takes minutes once",
                precision,
                self.onnx_path.name,
                gpu_name,
                self.build_reason,
            )
            calibrator = None
            if precision == "int8":
                size = int(self.metadata.input_size)
                batches, crops_sha = calibration_source(
                    calibration_dir, calibration_batch, size, self.metadata.mean, self.metadata.std
                )
                cache_path = calibration_cache_path(cache_root, key.onnx_sha256, crops_sha)
                nbytes = calibration_batch * 3 * size * size * 4
                calibrator = make_entropy_calibrator(
                    trt, batches, calibration_batch, cache_path, self._buffers, nbytes
                )
            serialized = build_serialized_engine(
                trt,
                onnx_bytes,
                int(self.metadata.input_size),
                precision=precision,
                max_batch=self.max_batch,
                opt_batch=opt_batch,
                workspace_bytes=int(workspace_mb) << 20,
                calibrator=calibrator,
                calibration_batch=calibration_batch,
            )
            _atomic_write(self.engine_path, serialized)
            record = dict(dataclasses.asdict(key), digest=key.digest())
            _atomic_write(self.record_path, json.dumps(record, indent=2).encode())
            engine = self._runtime.deserialize_cuda_engine(serialized)
            if engine is None:
                raise EngineBuildError("TensorRT could not load the engine it just built")
        else:
            LOG.info("reusing cached TensorRT engine %s", self.engine_path)
        self.engine = engine
        self.context = engine.create_execution_context()
        self._allocate_io()

    def _allocate_io(self) -> None:
        trt = self._trt
        engine = self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        if INPUT_NAME not in names:
            raise EngineBuildError(f"engine has no input {INPUT_NAME!r} (tensors: {names})")
        size = int(self.metadata.input_size)
        self.context.set_input_shape(INPUT_NAME, (self.max_batch, 3, size, size))
        self._io = {}
        for name in names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            nbytes = int(np.prod(shape)) * dtype.itemsize
            handle = self._buffers.alloc(nbytes)
            self._io[name] = (handle, shape, dtype)
            self.context.set_tensor_address(name, self._buffers.ptr(handle))
        self._outputs = list(graph_output_names(self.metadata))
        missing = [n for n in self._outputs if n not in self._io]
        if missing:
            raise EngineBuildError(f"engine lacks outputs {missing} (tensors: {names})")

    def _infer(self, batch: np.ndarray):
        n = batch.shape[0]
        handle, _, dtype = self._io[INPUT_NAME]
        self.context.set_input_shape(INPUT_NAME, tuple(batch.shape))
        self._buffers.to_device(handle, batch.astype(dtype, copy=False))
        if not self.context.execute_async_v3(self._buffers.stream_handle):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        self._buffers.synchronize()
        results = []
        for name in self._outputs:
            out_handle, shape, out_dtype = self._io[name]
            out = np.empty((n, *shape[1:]), dtype=out_dtype)
            self._buffers.to_host(out_handle, out)
            results.append(out.astype(np.float32, copy=False))
        return tuple(results)

    def close(self) -> None:
        self.context = None
        self.engine = None
        if getattr(self, "_buffers", None) is not None:
            self._buffers.close()
