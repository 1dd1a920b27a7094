"""ament_python package lechpe_ros: ROS 2 node, model library and offline trainer."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "lechpe_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["lechpe_model*", "lechpe_ros*", "training*"]),
    package_data={
        "lechpe_model": ["assets/*"],
        "training": ["assets/*", "configs/*.yaml"],
    },
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
    ],
    install_requires=["setuptools"],
    extras_require={
        # The robot: node + ONNX Runtime backend (rclpy and messages come from ROS).
        "runtime": [
            "numpy>=2",
            "opencv-python-headless<5",
            "pillow",  # quiet PNG/JPEG/GIF decoding of compressed images (image_checks)
            "scipy",
            "onnxruntime",
            "safetensors",
            "pyyaml",
        ],
        # Workstation: training, export, evaluation and plots.
        "train": [
            "torch",
            "torchvision",
            "onnx",
            "scikit-learn",
            "scikit-image",
            "tqdm",
            "tensorboard",
            "matplotlib",
        ],
        "dev": ["pytest", "pytest-timeout", "ruff", "colcon-common-extensions", "colcon-ros"],
    },
    zip_safe=True,
    maintainer="lechpe_ros maintainers",
    maintainer_email="maintainers@users.noreply.b-seed-078b667c.example",
    description="Occlusion-robust head pose estimation (LEC-HPE) for ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "pose_node = lechpe_ros.pose_node:main",
            "camera_replay = lechpe_ros.camera_replay:main",
            "lechpe-e2e-bench = lechpe_ros.e2e_bench:main",
            "lechpe-demo = lechpe_ros.demo:main",
            "lechpe-train = training.train:main",
            "lechpe-eval = training.evaluate:main",
            "lechpe-train-detector = training.detector_train:main",
            "lechpe-elbow = training.elbow:main",
            "lechpe-ablation = training.ablation:main",
            "lechpe-occlude = training.occlusion:main",
            "lechpe-synth = training.synth.cli:main",
            "lechpe-export = lechpe_model.cli.export:main",
            "lechpe-infer = lechpe_model.cli.infer:main",
            "lechpe-bench = lechpe_model.cli.bench:main",
            "lechpe-detbench = training.detector_bench:main",
        ],
    },
)
