"""hccn.conf parsing (pure) and device-IP lookup from the file or from an hccn_tool on PATH."""
import os
import stat

import pytest

from launcher import hccn
from launcher.errors import UserError

GOOD = """\
# written by hccn_tool
address_0=192.168.100.101
netmask_0=255.255.255.0
netdetect_0=192.168.100.1
gateway_0=192.168.100.1
send_arp_status_0=1
address_1 = 192.168.101.101

address_2=192.168.102.101
address_3=192.168.103.101
"""


def test_parse_keeps_addresses_and_skips_other_settings():
    assert hccn.parse_hccn_conf(GOOD) == {0: "192.168.100.101", 1: "192.168.101.101",
                                          2: "192.168.102.101", 3: "192.168.103.101"}


@pytest.mark.parametrize("text, fragments", [
    ("address_0=10.0.0.1\naddress_1 10.0.0.2\n", ["/etc/hccn.conf:2:", "malformed line", "'address_1 10.0.0.2'"]),
    ("address_0=10.0.0.1\naddress_1=10.0.0.256\n", ["/etc/hccn.conf:2:", "invalid IP address '10.0.0.256'",
                                                    "address_1"]),
    ("address_x=10.0.0.1\n", ["/etc/hccn.conf:1:", "bad key 'address_x'"]),
    ("address_0=10.0.0.1\n\naddress_0=10.0.0.2\n", ["/etc/hccn.conf:3:", "duplicate address_0", "line 1"]),
    ("address_0=10.0.0.1\naddress_1=10.0.0.1\n", ["/etc/hccn.conf:2:", "duplicate device IP 10.0.0.1",
                                                  "address_0"]),
    ("address_0=\n", ["/etc/hccn.conf:1:", "invalid IP address ''"]),
    ("", ["/etc/hccn.conf:", "no address_<chip>=<ip> lines"]),
    ("netmask_0=255.255.255.0\n", ["no address_<chip>=<ip> lines"]),
])
def test_parse_errors_name_file_line_and_value(text, fragments):
    with pytest.raises(UserError) as info:
        hccn.parse_hccn_conf(text, "/etc/hccn.conf")
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_device_ips_from_file_and_missing_chip(tmp_path):
    conf = tmp_path / "hccn.conf"
    conf.write_text(GOOD)
    assert hccn.device_ips([1, 3], conf, source="file") == {1: "192.168.101.101", 3: "192.168.103.101"}
    with pytest.raises(UserError, match=r"hccn.conf: missing address_5 .*chips 0,1,2,3"):
        hccn.device_ips([0, 5], conf, source="file")
    with pytest.raises(UserError, match=r"nothere.conf: hccn.conf not found"):
        hccn.device_ips([0], tmp_path / "nothere.conf", source="file")


def test_tool_output_parsing():
    out = "ipaddr:192.168.100.101\nnetmask:255.255.255.0\n"
    assert hccn.parse_hccn_tool_output(out, 0) == "192.168.100.101"
    with pytest.raises(UserError, match="no 'ipaddr:' line"):
        hccn.parse_hccn_tool_output("netmask:255.255.255.0\n", 2)
    with pytest.raises(UserError, match="invalid IP address '1.2.3'"):
        hccn.parse_hccn_tool_output("ipaddr:1.2.3\n", 2)


def _install_tool(bin_dir, body):
    tool = bin_dir / "hccn_tool"
    tool.write_text("#!/bin/sh\n" + body)
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)


@pytest.mark.processes
def test_hccn_tool_on_path_is_preferred_in_auto_mode(tmp_path, monkeypatch):
    # A stand-in for the driver's hccn_tool: prints the format of `hccn_tool -i <chip> -ip -g`.
    _install_tool(tmp_path, 'echo "ipaddr:10.9.0.$2"\necho "netmask:255.255.255.0"\n')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    conf = tmp_path / "hccn.conf"
    conf.write_text(GOOD)
    assert hccn.device_ips([0, 3], conf, source="auto") == {0: "10.9.0.0", 3: "10.9.0.3"}
    assert hccn.device_ips([0, 3], conf, source="file") == {0: "192.168.100.101", 3: "192.168.103.101"}


@pytest.mark.processes
def test_hccn_tool_failure_and_duplicates_are_user_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    _install_tool(tmp_path, 'echo "device $2 not found" >&2\nexit 1\n')
    with pytest.raises(UserError, match=r"hccn_tool -i 4 -ip -g: exit code 1: device 4 not found"):
        hccn.device_ips([4], source="tool")
    _install_tool(tmp_path, 'echo "ipaddr:10.9.0.1"\n')
    with pytest.raises(UserError, match="hccn_tool: duplicate device IP 10.9.0.1 for chips 0 and 1"):
        hccn.device_ips([0, 1], source="auto")


def test_tool_source_without_tool(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="hccn_tool not found on PATH"):
        hccn.device_ips([0], source="tool")
