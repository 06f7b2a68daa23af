"""kp2d_ros.transport and config/fastdds_subscriber.xml: the environment the launch files give the node.

No DDS here: the profile's effect (frames delivered) is tested over real DDS in test_ros_transport.py.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kp2d_ros import transport
from kp2d_ros.transport import (
    MIN_RECEIVE_BUFFER_BYTES,
    RECEIVE_BUFFER_BYTES,
    profile_in_use,
    profile_path,
    receive_buffer_warning,
    subscriber_environment,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
NS = {"dds": "http://www.eprosima.com"}


def test_environment_points_fast_dds_3_at_the_profile():
    env = subscriber_environment(environ={})
    assert list(env) == ["FASTDDS_DEFAULT_PROFILES_FILE"]  # one name only: Fast DDS 3 fails on a profile loaded twice
    assert Path(env["FASTDDS_DEFAULT_PROFILES_FILE"]).is_file()
    assert Path(env["FASTDDS_DEFAULT_PROFILES_FILE"]).name == "fastdds_subscriber.xml"


@pytest.mark.parametrize("distro", ["humble", "iron", "jazzy"])
def test_environment_uses_the_fast_dds_2_name_on_older_distributions(distro):
    assert list(subscriber_environment(environ={"ROS_DISTRO": distro})) == ["FASTRTPS_DEFAULT_PROFILES_FILE"]


@pytest.mark.parametrize(
    "variable", ["FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_BUILTIN_TRANSPORTS"]
)
def test_a_system_wide_fast_dds_configuration_is_left_alone(variable):
    assert subscriber_environment(environ={variable: "LARGE_DATA"}) == {}
    assert subscriber_environment(environ={variable: ""}) != {}  # set but empty: not a configuration


def test_profile_announces_udpv4_only_with_the_large_receive_buffer():
    root = ET.parse(profile_path()).getroot()
    descriptors = root.findall("dds:profiles/dds:transport_descriptors/dds:transport_descriptor", NS)
    assert [d.findtext("dds:type", namespaces=NS) for d in descriptors] == ["UDPv4"]
    assert int(descriptors[0].findtext("dds:receiveBufferSize", namespaces=NS)) == RECEIVE_BUFFER_BYTES
    participant = root.find("dds:profiles/dds:participant", NS)
    assert participant.get("is_default_profile") == "true"
    rtps = participant.find("dds:rtps", NS)
    assert rtps.findtext("dds:useBuiltinTransports", namespaces=NS) == "false"
    locators = rtps.findall("dds:defaultUnicastLocatorList/dds:locator/*", NS)
    assert [locator.tag.split("}")[1] for locator in locators] == ["udpv4"]  # no shared-memory locator
    used = [t.text for t in rtps.findall("dds:userTransports/dds:transport_id", NS)]
    assert used == [descriptors[0].findtext("dds:transport_id", namespaces=NS)]


def test_profile_is_installed_by_setup_py():
    setup = (REPO_ROOT / "setup.py").read_text()
    assert 'glob("config/*.xml")' in setup and (REPO_ROOT / "config" / "fastdds_subscriber.xml").is_file()


def test_receive_buffer_warning_only_with_the_profile_and_a_small_cap():
    with_profile = subscriber_environment(environ={})
    assert profile_in_use(with_profile) and not profile_in_use({})
    assert receive_buffer_warning(cap=MIN_RECEIVE_BUFFER_BYTES, environ=with_profile) is None
    assert receive_buffer_warning(cap=212992, environ={}) is None
    message = receive_buffer_warning(cap=212992, environ=with_profile)
    assert "net.core.rmem_max is 212992" in message and "sysctl" in message and "docs/ros.md" in message


def test_receive_buffer_cap_reads_the_kernel_limit():
    cap = transport.receive_buffer_cap()
    if not Path("/proc/sys/net/core/rmem_max").is_file():
        assert cap is None
    else:
        assert isinstance(cap, int) and cap > 0


def test_launch_files_declare_the_fastdds_profile_argument():
    reason = "ROS 2 launch / launch_ros not installed (no PyPI wheels; they come with a ROS 2 installation)"
    pytest.importorskip("launch.actions", reason=reason)
    pytest.importorskip("launch_ros.actions", reason=reason)
    import importlib.util

    from launch.actions import DeclareLaunchArgument

    for name in ("detector.launch.py", "demo.launch.py"):
        spec = importlib.util.spec_from_file_location(name.replace(".", "_"), REPO_ROOT / "launch" / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        entities = module.generate_launch_description().entities
        arguments = {e.name: e for e in entities if isinstance(e, DeclareLaunchArgument)}
        assert arguments["fastdds_profile"].default_value[0].text == "true", name
