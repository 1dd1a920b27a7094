"""Diagnostics watchdog, loss/reject WARNs, comparable latencies, qos auto choice,
unknown parameters (issue 13, items 1, 4, 5, 7). Pure functions, real messages."""

from __future__ import annotations

import pytest

pytest.importorskip("rclpy", reason="rclpy (ROS 2 Jazzy wheels) is not installed")

from lechpe_ros import diagnostics as diag
from lechpe_ros.parameters import unknown_parameter_warnings
from lechpe_ros.qos_selection import choose_reliability, fixed_reliability


def _camera(**counts) -> diag.CameraReport:
    return diag.CameraReport(
        name="front",
        topic="/front/image_raw",
        counters=diag.StreamCounters(**counts),
        input_rate_hz=5.0,
        processed_rate_hz=5.0,
        silent_s=0.1,
        timeout_s=2.0,
        has_camera_info=True,
        qos="best_effort",
    )


def _node(cameras, **worker) -> diag.NodeReport:
    return diag.NodeReport(
        node_name="lechpe_pose",
        backend="onnxruntime",
        device="cpu",
        model="m.onnx",
        detector="yuface",
        converter="numpy",
        latency_ms=[float("nan")] * 2,
        processing_ms=[1.0, 2.0],
        cameras=cameras,
        **worker,
    )


def _summary(report: diag.NodeReport):
    array = diag.build_diagnostics(report, stamp=diag.DiagnosticArray().header.stamp)
    return array.status[0], array.status[1]


def _lvl(status) -> int:
    return status.level[0] if isinstance(status.level, bytes) else int(status.level)


def test_healthy_node_is_ok():
    summary, camera = _summary(_node([_camera(received=100, processed=100)]))
    assert (_lvl(summary), summary.message, _lvl(camera)) == (0, "running", 0)
    assert diag.status_values(summary)["worker_alive"] == "True"


def test_dead_worker_is_an_error_with_the_fix():
    report = _node(
        [_camera(received=100, processed=10)],
        worker_alive=False,
        worker_error="error: OpenCV(4.14) ...",
    )
    summary, _ = _summary(report)
    assert _lvl(summary) == 2
    assert summary.message == (
        "inference worker thread is not running (last error: error: OpenCV(4.14) ...): "
        "no frame will be processed; restart the node and report the log"
    )


def test_stuck_worker_and_starved_output_are_errors():
    summary, _ = _summary(_node([_camera(received=5)], worker_waiting_s=12.5))
    assert _lvl(summary) == 2 and "a frame has waited 12.5 s" in summary.message
    # 40 frames arrived since the last tick, 1 handled (< 5 %): the watchdog fires.
    summary, _ = _summary(_node([_camera(received=40)], received_delta=40, handled_delta=1))
    assert _lvl(summary) == 2
    assert "handled 1 of 40 frames since the last report" in summary.message
    # 2 of 40 (exactly 5 %) is not below the limit.
    summary, _ = _summary(_node([_camera(received=40)], received_delta=40, handled_delta=2))
    assert _lvl(summary) == 0


@pytest.mark.parametrize(
    ("counts", "level", "text"),
    [
        (
            {"received": 94, "lost": 6, "processed": 94},
            1,
            "6 % of frames lost in transport (6 of 100",
        ),
        ({"received": 95, "lost": 5, "processed": 95}, 0, "receiving"),
        (
            {"received": 100, "rejected": 6, "processed": 94, "last_error": "rejected frame: x"},
            1,
            "6 % of frames rejected (6 of 100; last: rejected frame: x)",
        ),
        ({"received": 100, "rejected": 5, "processed": 95}, 0, "receiving; 5 rejected, 0 failed"),
    ],
)
def test_loss_and_rejections_above_five_percent_warn(counts, level, text):
    summary, camera = _summary(_node([_camera(**counts)]))
    assert _lvl(camera) == level and text in camera.message
    assert _lvl(summary) == level
    if level:
        assert "qos auto" in camera.message or "encoding" in camera.message  # the fix


def test_latency_only_for_comparable_stamps():
    now = 1_800_000_000 * 10**9
    assert diag.comparable_latency_ms(now, now - 25_000_000) == pytest.approx(25.0)
    assert diag.comparable_latency_ms(now, now + 500_000_000) == pytest.approx(-500.0)
    assert diag.comparable_latency_ms(now, 12 * 10**9) is None  # bag/sim stamp, wall clock
    assert diag.comparable_latency_ms(now, now + 2 * 10**9) is None
    assert diag.comparable_latency_ms(now, 0) is None
    # Sim time: node clock from /clock, stamps from the same clock.
    assert diag.comparable_latency_ms(12_500_000_000, 12_000_000_000) == pytest.approx(500.0)
    assert diag.comparable_latency_ms(0, 12 * 10**9) is None  # /clock not received yet
    text = diag.stamp_clock_warning(now, 12 * 10**9)
    assert "stamp 12.000 s" in text and "use_sim_time:=true" in text


def test_qos_auto_choice():
    assert choose_reliability([True, True]) == "reliable"
    assert choose_reliability([True, False]) == "best_effort"
    assert choose_reliability([]) == "best_effort"  # nobody yet: match anyone
    assert fixed_reliability("sensor_data") == "best_effort"
    assert fixed_reliability("reliable") == "reliable"
    assert fixed_reliability("auto") is None


def test_unknown_parameters_are_named_with_a_suggestion():
    warnings = unknown_parameter_warnings(["max_face", "use_sim_time", "max_faces", "qos"])
    assert warnings == [
        "unknown parameter 'max_face' is ignored (did you mean max_faces?); "
        "`pose_node --help` lists them"
    ]
    assert unknown_parameter_warnings(["zzz"]) == [
        "unknown parameter 'zzz' is ignored; `pose_node --help` lists them"
    ]
