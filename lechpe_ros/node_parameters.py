"""Declaring, validating and changing the node's parameters (the rclpy side of parameters.py)."""

from __future__ import annotations

from lechpe_ros.parameters import PARAMETERS, SPECS, ParameterError, validate_all, validate_value


def declare_and_validate(node) -> dict:
    """Declare every parameter on ``node`` (with descriptors) and validate the values.

    Raises:
        ParameterError: naming the parameter and the reason.
    """
    from rclpy.exceptions import (
        InvalidParameterTypeException,
        InvalidParameterValueException,
    )
    from rclpy.parameter import Parameter

    from lechpe_ros.parameters import descriptor

    values = {}
    for spec in PARAMETERS:
        default = spec.default
        if spec.kind == "string_array" and not default:
            default = Parameter.Type.STRING_ARRAY  # typed, initialised below
        try:
            param = node.declare_parameter(spec.name, default, descriptor(spec))
        except (InvalidParameterValueException, InvalidParameterTypeException) as exc:
            raise ParameterError(f"parameter {spec.name}: {exc}") from exc
        value = param.value
        if value is None and spec.kind == "string_array":
            value = []
        if spec.kind == "string_array":
            # YAML cannot type an empty list: [""] means "none given".
            value = [v for v in value if v != ""] if spec.name != "image_topics" else list(value)
        if spec.kind == "double" and isinstance(value, int):
            value = float(value)
        values[spec.name] = value
    validate_all(values)
    return values


def on_set_parameters(values: dict, params):
    """Validate run-time changes (read-only and range checks); apply them to ``values``."""
    from rcl_interfaces.msg import SetParametersResult

    for param in params:
        spec = SPECS.get(param.name)
        if spec is None:
            continue
        if not spec.dynamic:
            return SetParametersResult(
                successful=False,
                reason=f"{param.name} is read-only; restart the node to change it",
            )
        try:
            value = param.value
            if spec.kind == "double" and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            validate_value(param.name, value)
        except ParameterError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
    for param in params:
        if param.name in SPECS:
            value = param.value
            values[param.name] = float(value) if SPECS[param.name].kind == "double" else value
    return SetParametersResult(successful=True)
