"""hccl_tools.py command lines give the table hccl_tools would write, minus its bugs.

`hccl_tools_table` is hccl_tools.py's documented logic (mindspore/models utils/hccl_tools): `--device_num
"[first,end)"` selects positions first..end-1 of `--visible_devices` (default 0..7, used in the given
order), each position's chip becomes `device_id` with rank ids 0.. in that order, and only [0,8) may
cross the 4-chip groups. Its bugs are left out: it reads `--device_num` by character position (so [0,16)
is unreadable), takes device IPs by position instead of chip, and checks the group rule on positions.
"""
import json
import subprocess
import sys

import pytest

from launcher import ranktable


def hccn_text(chips):
    return "".join(f"address_{c}=192.168.{c}.1\n" for c in chips)


def hccl_tools_table(device_num, visible_devices, server_ip, device_ips, server_cards=8):
    first, end = (int(x) for x in device_num.strip("[)").split(","))
    visible = visible_devices.split(",")
    assert 0 <= first < end <= server_cards and len(visible) >= end - first
    chips = [int(visible[position]) for position in range(first, end)]
    if server_cards == 8:
        assert len(chips) == 8 or len({c // 4 for c in chips}) == 1, "hccl_tools refuses cross-group sets"
    devices = [{"device_id": str(chip), "device_ip": device_ips[chip], "rank_id": str(rank)}
               for rank, chip in enumerate(chips)]
    return {"version": "1.0", "server_count": "1",
            "server_list": [{"server_id": server_ip, "device": devices, "host_nic_ip": "reserve"}],
            "status": "completed"}


CASES = [  # (--device_num, --visible_devices, cards on the server)
    ("[0,8)", "0,1,2,3,4,5,6,7", 8),     # hccl_tools' defaults
    ("[0,4)", "0,1,2,3,4,5,6,7", 8),
    ("[4,8)", "0,1,2,3,4,5,6,7", 8),
    ("[0,1)", "0,1,2,3,4,5,6,7", 8),
    ("[2,4)", "0,1,2,3,4,5,6,7", 8),
    ("[0,4)", "4,5,6,7", 8),             # the case: devices 4,5,6,7
    ("[0,2)", "4,5,6,7", 8),
    ("[2,4)", "4,5,6,7", 8),
    ("[1,2)", "4,5,6,7", 8),
    ("[0,4)", "0,1,2,3", 8),
    ("[0,2)", "2,3", 8),
    ("[0,16)", ",".join(map(str, range(16))), 16),
    ("[8,16)", ",".join(map(str, range(16))), 16),
    ("[0,8)", "8,9,10,11,12,13,14,15", 16),
    ("[0,4)", "12,13,14,15", 16),
]


@pytest.mark.parametrize("device_num, visible, cards", CASES)
def test_same_table_as_hccl_tools(tmp_path, device_num, visible, cards):
    conf = tmp_path / "hccn.conf"
    conf.write_text(hccn_text(range(cards)))
    device_ips = {c: f"192.168.{c}.1" for c in range(cards)}
    ours = ranktable.generate_local(device_num, visible, "10.0.0.7", str(conf), server_cards=cards, env={})
    assert ours == hccl_tools_table(device_num, visible, "10.0.0.7", device_ips, cards)


@pytest.mark.processes
def test_the_command_line_spelling(tmp_path, clean_env):
    """`launcher ranktable --device_num "[0,4)" --visible_devices 4,5,6,7` as people paste it."""
    (tmp_path / "hccn.conf").write_text(hccn_text(range(8)))
    proc = subprocess.run([sys.executable, "-m", "launcher", "ranktable", "--device_num", "[0,4)",
                           "--visible_devices", "4,5,6,7", "--server_ip", "10.0.0.7", "--hccn-conf", "hccn.conf",
                           "-o", "t.json"], cwd=tmp_path, env=clean_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    table = json.loads((tmp_path / "t.json").read_text())
    assert [d["device_id"] for d in table["server_list"][0]["device"]] == ["4", "5", "6", "7"]
