"""Helpers for the ROS 2 tests: real rclpy in the test process, real nodes as subprocesses, real DDS.

- :func:`require_ros` skips a test module when rclpy / kp2d_ros_msgs cannot be imported, unless the tests run
  in the full ROS environment (``scripts/with_ros_env.sh`` sets ``KP2D_ROS_ENV=1``), where that is a failure.
- Importing this module gives the test run its own ``ROS_DOMAIN_ID`` (from the process id, unless
  ``KP2D_TEST_ROS_DOMAIN_ID`` is set) so parallel runs on one machine do not see each other; every test also
  uses its own namespace. Discovery stays on loopback (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``).
- :class:`NodeProcess` starts an installed executable as ``ros2 run`` would (found through the ament index, so
  the same tests run from the repository after ``make ros`` and in a colcon workspace) and always stops it.
- :class:`RosTestNode` is an rclpy node in its own context with a background executor, with waits on
  discovery and on messages (with timeouts instead of blind sleeps).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _installed_executables() -> Path:
    """``<prefix>/lib/kp2d_ros``, the prefix found through the ament index (``AMENT_PREFIX_PATH``, as ``ros2 run``
    does): the repository's ``install/`` for ``make test``, the workspace's for ``colcon test``."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    except ImportError:  # no ROS environment at all: require_ros() skips
        return REPO_ROOT / "install" / "kp2d_ros" / "lib" / "kp2d_ros"
    try:
        return Path(get_package_prefix("kp2d_ros")) / "lib" / "kp2d_ros"
    except (PackageNotFoundError, OSError):  # not in the index, or no AMENT_PREFIX_PATH at all
        return REPO_ROOT / "install" / "kp2d_ros" / "lib" / "kp2d_ros"


INSTALL_BIN = _installed_executables()
DEFAULT_MODEL = REPO_ROOT / "kp2d_model" / "weights" / "kp2d_default.safetensors"

os.environ["ROS_DOMAIN_ID"] = os.environ.get("KP2D_TEST_ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # Iron and newer
if os.environ.get("ROS_DISTRO") == "humble":  # Humble knows only the older switch
    os.environ.setdefault("ROS_LOCALHOST_ONLY", "1")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")


def require_ros() -> None:
    """Skip (outside the ROS environment) or fail (inside it) when rclpy or the built messages are missing."""
    try:
        import rclpy  # noqa: F401

        from kp2d_ros_msgs.msg import Keypoints  # noqa: F401 (the source folder alone imports as a namespace package)
    except ImportError as error:
        if os.environ.get("KP2D_ROS_ENV") == "1":
            raise
        pytest.skip(
            f"ROS 2 environment not set up ({error}); run 'make test' or scripts/with_ros_env.sh pytest",
            allow_module_level=True,
        )
    if not (INSTALL_BIN / "detector").is_file():
        if os.environ.get("KP2D_ROS_ENV") == "1":
            pytest.fail(f"{INSTALL_BIN / 'detector'} missing: scripts/build_ros.sh did not install kp2d_ros")
        pytest.skip(
            f"kp2d_ros not built ({INSTALL_BIN / 'detector'} missing; run 'make ros' or colcon build)",
            allow_module_level=True,
        )


def unique_namespace(prefix: str = "kp2d_test") -> str:
    return f"/{prefix}_{uuid.uuid4().hex[:8]}"


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class NodeProcess:
    """An installed kp2d_ros executable run as ``ros2 run kp2d_ros <name> --ros-args ...``; output to a log file."""

    def __init__(self, name: str, ros_args: list[str], log_dir: Path):
        self.name = name
        self.log_path = Path(log_dir) / f"{name}_{uuid.uuid4().hex[:6]}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        command = [str(INSTALL_BIN / name), "--ros-args", *ros_args]
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float) -> str:
        """Wait until ``text`` appears in the output (AssertionError with the log on timeout or early exit)."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.process.poll() is not None and text not in self.log():
                raise AssertionError(f"{self.name} exited ({self.process.returncode}) before logging {text!r}:\n"
                                     f"{self.log()[-3000:]}")  # fmt: skip
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not log {text!r} within {timeout:.0f} s:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        return self.log()

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def stop(self) -> int | None:
        """SIGINT (as Ctrl-C), then SIGTERM, then SIGKILL; returns the exit code."""
        for sig, grace in ((signal.SIGINT, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if self.process.poll() is not None:
                break
            self.process.send_signal(sig)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                continue
        self._log.close()
        return self.process.returncode


class Inbox:
    """Messages received on one subscription, in arrival order, with arrival times (time.monotonic())."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.arrivals: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, msg: Any) -> None:
        with self._lock:
            self.messages.append(msg)
            self.arrivals.append(time.monotonic())

    def snapshot(self) -> list[Any]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, predicate: Callable[[Any], bool], timeout: float, what: str) -> Any:
        """The first message satisfying ``predicate`` (waiting for it)."""

        def find() -> Any:
            return next((m for m in self.snapshot() if predicate(m)), None)

        return wait_until(find, timeout, what)

    def wait_count(self, count: int, timeout: float, what: str) -> list[Any]:
        wait_until(lambda: len(self.snapshot()) >= count, timeout, f"{count} x {what}")
        return self.snapshot()


class RosTestNode:
    """An rclpy node for the test process (own context, executor in a background thread)."""

    def __init__(self, name: str = "kp2d_test_client"):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"{name}_{uuid.uuid4().hex[:6]}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._clients: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except (ExternalShutdownException, Exception):  # context shut down in close()
            pass

    def subscribe(self, msg_type: Any, topic: str, qos: Any = 10) -> Inbox:
        inbox = Inbox()
        self.node.create_subscription(msg_type, topic, inbox, qos)
        return inbox

    def publisher(self, msg_type: Any, topic: str, qos: Any = 10) -> Any:
        return self.node.create_publisher(msg_type, topic, qos)

    def wait_for_subscribers(self, publisher: Any, count: int = 1, timeout: float = 30.0) -> None:
        wait_until(lambda: publisher.get_subscription_count() >= count, timeout,
                   f"{count} subscriber(s) on {publisher.topic_name}")  # fmt: skip

    def wait_for_publishers(self, topic: str, count: int = 1, timeout: float = 30.0) -> None:
        wait_until(lambda: self.node.count_publishers(topic) >= count, timeout, f"{count} publisher(s) on {topic}")

    def call(self, service_type: Any, name: str, request: Any, timeout: float = 20.0) -> Any:
        """Call a service (clients are kept, so only the first call waits for discovery)."""
        client = self._clients.get(name)
        if client is None:
            client = self._clients[name] = self.node.create_client(service_type, name)
        if not client.wait_for_service(timeout_sec=timeout):
            raise AssertionError(f"service {name} not available within {timeout:.0f} s")
        future = client.call_async(request)
        wait_until(future.done, timeout, f"response of {name}")
        return future.result()

    def set_parameters(self, node_name: str, values: dict[str, Any], timeout: float = 20.0) -> list[Any]:
        """Call ``<node_name>/set_parameters``; returns the SetParametersResult list (one per value)."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        request = SetParameters.Request()
        request.parameters = [Parameter(name, value=value).to_parameter_msg() for name, value in values.items()]
        return self.call(SetParameters, f"{node_name}/set_parameters", request, timeout).results

    def get_parameters(self, node_name: str, names: list[str], timeout: float = 20.0) -> list[Any]:
        """Call ``<node_name>/get_parameters``; returns the values as Python objects."""
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        request = GetParameters.Request(names=names)
        values = self.call(GetParameters, f"{node_name}/get_parameters", request, timeout).values
        return [parameter_value_to_python(value) for value in values]

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5.0)


def sensor_qos() -> Any:
    """BEST_EFFORT, depth 1 (what cameras publish and the detector subscribes with by default)."""
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)


def stamp(seconds: float) -> Any:
    from builtin_interfaces.msg import Time

    return Time(sec=int(seconds), nanosec=int(round((seconds - int(seconds)) * 1e9)))


def stamp_seconds(time_msg: Any) -> float:
    return time_msg.sec + time_msg.nanosec * 1e-9


def is_stamp(time_msg: Any, seconds: float) -> bool:
    """``time_msg`` is the stamp made by ``stamp(seconds)`` (float seconds near 2e9 are only exact to ~0.2 us)."""
    return abs(stamp_seconds(time_msg) - seconds) < 1e-6
