"""colcon build of the package into a temporary workspace, as on a robot.

Checks what `ros2 run` / `ros2 launch` rely on: the executables under
lib/lechpe_ros, the ament resource index entry and the share directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

IGNORED = shutil.ignore_patterns(
    ".venv",
    ".git",
    "build",
    "install",
    "log",
    "runs",
    "out",
    "__pycache__",
    "*.egg-info",
    ".*cache",
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, repo_root: Path) -> Path:
    colcon = Path(sys.prefix) / "bin" / "colcon"
    if not colcon.exists():
        pytest.fail(f"colcon is not installed in {sys.prefix}; run scripts/bootstrap.sh")
    ws = tmp_path_factory.mktemp("colcon_ws")
    shutil.copytree(repo_root, ws / "src" / "lechpe_ros", ignore=IGNORED)
    env = dict(os.environ, PATH=f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(
        [str(colcon), "build", "--base-paths", "src"],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"colcon build failed:\n{result.stdout}\n{result.stderr}"
    return ws


def _sourced(ws: Path, command: str) -> subprocess.CompletedProcess:
    """Run `command` in bash after sourcing the workspace's setup.bash."""
    script = f"source {ws / 'install' / 'setup.bash'} && {command}"
    env = {k: v for k, v in os.environ.items() if k not in ("AMENT_PREFIX_PATH", "PYTHONPATH")}
    return subprocess.run(
        ["bash", "-c", script], cwd=ws, env=env, capture_output=True, text=True, timeout=300
    )


def test_executables_installed_where_ros2_run_looks(workspace: Path):
    lib = workspace / "install" / "lechpe_ros" / "lib" / "lechpe_ros"
    for name in ("pose_node", "camera_replay", "lechpe-train", "lechpe-export", "lechpe-synth"):
        assert (lib / name).is_file(), f"{name} missing from {lib}: {sorted(os.listdir(lib))}"
        assert os.access(lib / name, os.X_OK)


def test_share_directory_holds_package_xml_launch_and_config(workspace: Path):
    share = workspace / "install" / "lechpe_ros" / "share" / "lechpe_ros"
    assert (share / "package.xml").is_file()
    assert (share / "launch" / "pose.launch.py").is_file()
    assert (share / "config" / "pose.yaml").is_file()


def test_ament_index_finds_the_package(workspace: Path):
    result = _sourced(
        workspace,
        f"{sys.executable} -c 'from ament_index_python.packages import "
        'get_package_share_directory as g; print(g("lechpe_ros"))\'',
    )
    assert result.returncode == 0, result.stderr
    expected = workspace / "install" / "lechpe_ros" / "share" / "lechpe_ros"
    assert Path(result.stdout.strip()) == expected


def test_installed_pose_node_help_runs_without_ros_graph(workspace: Path):
    node = workspace / "install" / "lechpe_ros" / "lib" / "lechpe_ros" / "pose_node"
    result = _sourced(workspace, f"{node} --help")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "image_topic" in result.stdout


def test_default_model_and_dds_profile_installed_with_the_library(workspace: Path):
    result = _sourced(
        workspace,
        f"{sys.executable} -c 'import lechpe_model.default_model as d, lechpe_model.local_dds as l; "
        "print(d.default_model_path()); print(l.shm_profile_path())'",
    )
    assert result.returncode == 0, result.stderr
    model, profile = (Path(line) for line in result.stdout.split())
    install = workspace / "install" / "lechpe_ros"
    assert install in model.parents and install in profile.parents
    assert model.with_suffix(".onnx").is_file()
