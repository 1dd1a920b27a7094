"""BlazeFace's ONNX graph as a trainable PyTorch module, and its weights written back.

The shipped BlazeFace detectors (``lechpe_model/assets/blazeface_*.onnx``) were
converted from TFLite; their graphs use a handful of operators (Conv, Relu, Pad,
Add, Resize, DepthToSpace, Transpose, Reshape, Cast). :class:`OnnxBlazeFace`
runs the graph node by node with those operators in torch, every floating-point
initialiser a parameter, so the detector can be fine-tuned
(``training.detector_train``). :func:`write_onnx_weights` puts the trained
values back into a copy of the same graph: the file keeps its inputs, outputs
and operators, so :class:`lechpe_model.detection.BlazeFaceDetector`, ONNX
Runtime and TensorRT load it like the original.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

SUPPORTED_OPS = {"Cast", "Conv", "Relu", "Pad", "Add", "Resize", "DepthToSpace", "Transpose"}
SUPPORTED_OPS |= {"Reshape", "Concat", "MaxPool"}


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class OnnxBlazeFace(nn.Module):
    """A BlazeFace ONNX graph executed in torch (batch size free).

    Args:
        path: the ONNX file (the shipped ``blazeface_*.onnx`` or one written by
            :func:`write_onnx_weights`).

    Raises:
        ValueError: the graph uses an operator this module does not implement.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        model = onnx.load(str(path))
        graph = model.graph
        unknown = sorted({n.op_type for n in graph.node} - SUPPORTED_OPS)
        if unknown:
            raise ValueError(f"{path}: operators {unknown} are not supported by OnnxBlazeFace")
        self.params = nn.ParameterList()
        self.param_names: list[str] = []  # initialiser name of each parameter
        self._constants: dict[str, np.ndarray] = {}
        self._values: dict[str, int] = {}  # initialiser name -> index in self.params
        for init in graph.initializer:
            array = numpy_helper.to_array(init)
            if np.issubdtype(array.dtype, np.floating) and array.size > 0:
                self._values[init.name] = len(self.params)
                self.params.append(nn.Parameter(torch.from_numpy(array.astype(np.float32))))
                self.param_names.append(init.name)
            else:
                self._constants[init.name] = array
        self.nodes = [(n.op_type, list(n.input), list(n.output), _attrs(n)) for n in graph.node]
        self.input_name = graph.input[0].name
        self.output_names = [o.name for o in graph.output]

    def _value(self, name: str, env: dict) -> torch.Tensor:
        if name in env:
            return env[name]
        return self.params[self._values[name]]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, S, S)`` RGB in [-1, 1] -> regressors ``(B, N, 16)``, logits ``(B, N, 1)``."""
        env: dict[str, torch.Tensor] = {self.input_name: x}
        for op, inputs, outputs, attrs in self.nodes:
            if op == "Cast":  # float16 weights stored with a Cast: parameters are float32
                out = self._value(inputs[0], env).float()
            elif op == "Conv":
                weight = self._value(inputs[1], env)
                bias = self._value(inputs[2], env) if len(inputs) > 2 and inputs[2] else None
                top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
                x_in = env[inputs[0]]
                if (top, left) != (bottom, right):  # TFLite's SAME padding: more at the end
                    x_in = F.pad(x_in, (left, right, top, bottom))
                    top = left = 0
                out = F.conv2d(
                    x_in,
                    weight,
                    bias,
                    stride=tuple(attrs.get("strides", [1, 1])),
                    padding=(top, left),
                    dilation=tuple(attrs.get("dilations", [1, 1])),
                    groups=int(attrs.get("group", 1)),
                )
            elif op == "Relu":
                out = F.relu(env[inputs[0]])
            elif op == "Add":
                out = self._value(inputs[0], env) + self._value(inputs[1], env)
            elif op == "Pad":
                if attrs.get("mode", b"constant") != b"constant":
                    raise ValueError(f"Pad mode {attrs['mode']!r} is not supported")
                p = [int(v) for v in self._constants[inputs[1]]]  # begins (NCHW), then ends
                if p[0] or p[4]:
                    raise ValueError(f"Pad over the batch {p} is not supported")
                # channels too: short range pads a block's channels to add its skip
                out = F.pad(env[inputs[0]], (p[3], p[7], p[2], p[6], p[1], p[5]))
            elif op == "Resize":
                if attrs.get("mode") != b"linear" or attrs.get(
                    "coordinate_transformation_mode"
                ) not in (b"half_pixel", b"pytorch_half_pixel"):
                    raise ValueError(f"Resize {attrs} is not supported")
                size = [int(v) for v in self._constants[inputs[3]][2:]]
                out = F.interpolate(env[inputs[0]], size=size, mode="bilinear", align_corners=False)
            elif op == "DepthToSpace":
                x_in = env[inputs[0]]
                b, c, h, w = x_in.shape
                bs = int(attrs["blocksize"])
                if attrs.get("mode", b"DCR") == b"DCR":
                    out = x_in.reshape(b, bs, bs, c // (bs * bs), h, w)
                    out = out.permute(0, 3, 4, 1, 5, 2).reshape(b, c // (bs * bs), h * bs, w * bs)
                else:  # CRD is torch's pixel_shuffle
                    out = F.pixel_shuffle(x_in, bs)
            elif op == "Transpose":
                out = env[inputs[0]].permute(*attrs["perm"])
            elif op == "Reshape":
                shape = [int(v) for v in self._constants[inputs[1]]]
                shape[0] = env[inputs[0]].shape[0]  # the graph was exported for batch 1
                out = env[inputs[0]].reshape(shape)
            elif op == "Concat":
                out = torch.cat([env[name] for name in inputs], dim=int(attrs["axis"]))
            elif op == "MaxPool":
                kernel, stride = list(attrs["kernel_shape"]), list(attrs.get("strides", [1, 1]))
                x_in = env[inputs[0]]
                if attrs.get("auto_pad", b"NOTSET") in (b"SAME_UPPER", b"SAME_LOWER"):
                    # pad to ceil(size / stride) outputs; SAME_UPPER puts the extra at the end
                    extra = []
                    for size, k, st in zip(x_in.shape[2:], kernel, stride, strict=True):
                        extra.append(max((math.ceil(size / st) - 1) * st + k - size, 0))
                    upper = attrs["auto_pad"] == b"SAME_UPPER"
                    pad = []
                    for total in reversed(extra):  # F.pad: last dimension first
                        low = total // 2 if upper else total - total // 2
                        pad += [low, total - low]
                    x_in = F.pad(x_in, pad, value=float("-inf"))
                elif any(attrs.get("pads", [0])):
                    raise ValueError(f"MaxPool pads {attrs['pads']} are not supported")
                out = F.max_pool2d(x_in, kernel, stride)
            else:  # pragma: no cover - rejected in __init__
                raise ValueError(op)
            env[outputs[0]] = out
        return env[self.output_names[0]], env[self.output_names[1]]


def write_onnx_weights(module: OnnxBlazeFace, source: str | Path, destination: str | Path) -> Path:
    """Copy ``source`` (the graph ``module`` was built from) with ``module``'s weights.

    Weights are stored as float32 (the original's float16 initialisers keep their
    Cast nodes, which become float32 -> float32 no-ops), so nothing trained is
    rounded away. The graph is checked with ``onnx.checker``.
    """
    model = onnx.load(str(source))
    names = {name: i for i, name in enumerate(module.param_names)}
    for init in model.graph.initializer:
        if init.name in names:
            value = module.params[names[init.name]].detach().cpu().numpy().astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(value, init.name))
    # value_info from the conversion may still say float16 for the Cast inputs
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(destination))
    return destination


def shift_score_threshold(
    source: str | Path, destination: str | Path, operating_threshold: float
) -> Path:
    """Copy ``source`` with every score logit raised by ``-logit(operating_threshold)``.

    A detection scoring ``operating_threshold`` in ``source`` then scores 0.5 in
    ``destination``, so the runtime's one default threshold (0.5) is this
    detector's chosen operating point. Done exactly: the score output is a
    rearrangement (DepthToSpace, Transpose, Reshape) of one convolution, whose
    bias gets the constant (as a new initialiser if the bias was shared).
    """
    if not 0.0 < operating_threshold < 1.0:
        raise ValueError(f"operating_threshold must be in (0, 1), got {operating_threshold}")
    shift = -math.log(operating_threshold / (1.0 - operating_threshold))
    model = onnx.load(str(source))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    name = graph.output[1].name  # scores: [1, N, 1]
    node = producer.get(name)
    while node is not None and node.op_type in ("Reshape", "Transpose", "DepthToSpace"):
        node = producer.get(node.input[0])
    if node is None or node.op_type != "Conv" or len(node.input) < 3:
        raise ValueError(f"{source}: the score output does not come from one biased Conv")
    inits = {init.name: init for init in graph.initializer}
    bias_name = node.input[2]
    if bias_name in inits:
        bias = numpy_helper.to_array(inits[bias_name]).astype(np.float32)
    else:  # stored as float16 behind a Cast
        cast = producer[bias_name]
        bias = numpy_helper.to_array(inits[cast.input[0]]).astype(np.float32)
    new_name = bias_name.split(";")[0] + "/score_shift"
    graph.initializer.append(numpy_helper.from_array(bias + np.float32(shift), new_name))
    node.input[2] = new_name
    if bias_name in inits and not any(bias_name in n.input for n in graph.node):
        graph.initializer.remove(inits[bias_name])  # unused now (ONNX Runtime would warn)
    onnx.checker.check_model(model)
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(destination))
    return destination


def main(argv: list[str] | None = None) -> int:
    """``python -m training.blazeface_torch --operating-threshold T IN OUT``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m training.blazeface_torch",
        description="Copy a BlazeFace ONNX file with its scores shifted so that a score of "
        "T in IN scores 0.5 in OUT (the runtime's default threshold).",
    )
    parser.add_argument("source", type=Path)
    parser.add_argument("destination", type=Path)
    parser.add_argument("--operating-threshold", type=float, required=True)
    args = parser.parse_args(argv)
    path = shift_score_threshold(args.source, args.destination, args.operating_threshold)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
