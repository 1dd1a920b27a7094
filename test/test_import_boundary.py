"""The dependency direction lechpe_ros -> lechpe_model <- training holds at import time."""

from __future__ import annotations

import subprocess
import sys

import pytest

FORBIDDEN_AFTER_IMPORT = {
    # A robot without the training stack (or without torch) must be able to run the node.
    "lechpe_model": ("rclpy", "training", "torch"),
    "lechpe_model.pipeline": ("rclpy", "training", "torch"),
    "lechpe_model.backends.onnxruntime_backend": ("rclpy", "training", "torch"),
    "lechpe_model.network": ("rclpy", "training"),
    "lechpe_model.checkpoint": ("rclpy", "training"),
    "lechpe_ros": ("training",),
    "lechpe_ros.pose_node": ("training", "torch"),
    "lechpe_ros.demo": ("training",),
}


def _loaded_after(module: str) -> set[str]:
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        "print('\\n'.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"import {module} failed:\n{result.stderr}"
    return set(result.stdout.split())


@pytest.mark.parametrize("module", sorted(FORBIDDEN_AFTER_IMPORT))
def test_import_does_not_pull_forbidden_packages(module: str):
    loaded = _loaded_after(module)
    leaked = [name for name in FORBIDDEN_AFTER_IMPORT[module] if name in loaded]
    assert not leaked, f"importing {module} also imported {leaked}"


def test_boundary_check_detects_a_real_import():
    # The check itself can fail: importing lechpe_model.network must load torch.
    assert "torch" in _loaded_after("lechpe_model.network")
