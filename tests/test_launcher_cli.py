"""`python -m launcher ranktable|merge|validate|run` end to end in subprocesses: files, messages, exit codes."""
import json
import subprocess
import sys

import pytest

from launcher import ranktable

pytestmark = pytest.mark.processes


def launcher(cwd, env, *args, module=("-m", "launcher")):
    return subprocess.run([sys.executable, *module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def hccn_text(server: int, chips=range(8)) -> str:
    return "".join(f"address_{c}=192.168.{c}.{server}\nnetmask_{c}=255.255.255.0\n" for c in chips)


@pytest.fixture()
def work(tmp_path):
    (tmp_path / "hccn.conf").write_text(hccn_text(1))
    (tmp_path / "hccn2.conf").write_text(hccn_text(2))
    return tmp_path


def assert_user_error(proc, *fragments):
    """Exit 2, exactly one 'error:' line on stderr containing every fragment, no traceback, nothing on stdout."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert proc.stdout == ""


def test_ranktable_default_path_and_content(work, clean_env):
    proc = launcher(work, clean_env, "ranktable", "--hccn-conf", "hccn.conf", "--server-ip", "10.0.0.1",
                    "--device-num", "[4,8)")
    assert proc.returncode == 0, proc.stderr
    path = work / "hccl_configs" / "hccl_4p_4567_10.0.0.1.json"
    assert proc.stdout.strip() == f"wrote {path.relative_to(work)} (1 server(s), 4 ranks)"
    table = json.loads(path.read_text())
    assert ranktable.validate(table) == []
    assert table["server_list"][0]["device"][0] == {"device_id": "4", "device_ip": "192.168.4.1", "rank_id": "0"}


def test_ranktable_visible_devices_env_and_console_script(work, clean_env):
    env = dict(clean_env, ASCEND_RT_VISIBLE_DEVICES="2,3")
    proc = launcher(work, env, "--hccn-conf", "hccn.conf", "--server-ip", "10.0.0.1", "-o", "t.json",
                    module=("-c", "import sys; from launcher.cli import ranktable_main; sys.exit(ranktable_main())"))
    assert proc.returncode == 0, proc.stderr
    table = json.loads((work / "t.json").read_text())
    assert [d["device_id"] for d in table["server_list"][0]["device"]] == ["2", "3"]


@pytest.mark.parametrize("conf_text, args, fragments", [
    ("address_0=192.168.0.1\naddress_1: 192.168.1.1\n", ["--device-num", "[0,2)"],
     ["hccn.conf:2: malformed line", "'address_1: 192.168.1.1'"]),
    (hccn_text(1, range(3)), ["--device-num", "[0,4)"], ["hccn.conf: missing address_3"]),
    ("address_0=192.168.0.1\naddress_1=192.168.1.300\n", ["--device-num", "[0,2)"],
     ["hccn.conf:2: invalid IP address '192.168.1.300' for address_1"]),
    ("address_0=192.168.0.1\naddress_1=192.168.0.1\n", ["--device-num", "[0,2)"],
     ["hccn.conf:2: duplicate device IP 192.168.0.1"]),
    ("", ["--device-num", "[0,2)"], ["hccn.conf: no address_<chip>=<ip> lines"]),
    (hccn_text(1), ["--device-num", "[0,9)"], ["--device-num '[0,9)': device 8 out of range"]),
    (hccn_text(1), ["--device-num", "[2,6)"], ["--device-num '[2,6)'", "4-chip group boundary"]),
    (hccn_text(1), ["--device-num", "0,,1"], ["--device-num '0,,1': bad item ''"]),
    (hccn_text(1), ["--server-ip", "localhost"], ["--server-ip 'localhost': not an IPv4 address"]),
    (hccn_text(1), ["--visible-devices", "0,1", "--device-num", "3"], ["device 3 is not visible"]),
])
def test_ranktable_bad_input(work, clean_env, conf_text, args, fragments):
    (work / "hccn.conf").write_text(conf_text)
    if "--server-ip" not in args:
        args = [*args, "--server-ip", "10.0.0.1"]
    proc = launcher(work, clean_env, "ranktable", "--hccn-conf", "hccn.conf", *args)
    assert_user_error(proc, *fragments)
    assert not (work / "hccl_configs").exists()


def test_ranktable_missing_conf_file(work, clean_env):
    proc = launcher(work, clean_env, "ranktable", "--hccn-conf", "nope.conf", "--server-ip", "10.0.0.1")
    assert_user_error(proc, "nope.conf: hccn.conf not found")


def write_server(work, env, conf, ip, name):
    proc = launcher(work, env, "ranktable", "--hccn-conf", conf, "--server-ip", ip, "-o", name)
    assert proc.returncode == 0, proc.stderr


def test_merge_then_validate(work, clean_env):
    write_server(work, clean_env, "hccn.conf", "10.0.0.10", "a.json")
    write_server(work, clean_env, "hccn2.conf", "10.0.0.9", "b.json")
    proc = launcher(work, clean_env, "merge", "a.json", "b.json")
    assert proc.returncode == 0, proc.stderr
    path = work / "hccl_configs" / "hccl_16p_01234567_10.0.0.9.json"
    merged = json.loads(path.read_text())
    assert [s["server_id"] for s in merged["server_list"]] == ["10.0.0.9", "10.0.0.10"]
    assert merged["server_list"][1]["device"][0]["rank_id"] == "8"
    proc = launcher(work, clean_env, "merge", "a.json", "b.json", "--order", "10.0.0.10,10.0.0.9", "-o", "o.json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((work / "o.json").read_text())["server_list"][0]["server_id"] == "10.0.0.10"

    proc = launcher(work, clean_env, "validate", str(path), "o.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [f"{path}: valid (2 server(s), 16 ranks)",
                                        "o.json: valid (2 server(s), 16 ranks)"]


def test_merge_rejects_duplicates_without_output(work, clean_env):
    write_server(work, clean_env, "hccn.conf", "10.0.0.1", "a.json")
    write_server(work, clean_env, "hccn.conf", "10.0.0.2", "b.json")
    proc = launcher(work, clean_env, "merge", "a.json", "b.json")
    assert_user_error(proc, "b.json: duplicate device IP 192.168.0.1 (also in a.json)")
    write_server(work, clean_env, "hccn2.conf", "10.0.0.1", "c.json")
    proc = launcher(work, clean_env, "merge", "a.json", "c.json")
    assert_user_error(proc, "c.json: duplicate server 10.0.0.1 (also in a.json)")
    assert not (work / "hccl_configs").exists()


def test_validate_prints_every_problem(work, clean_env):
    table = ranktable.server_table("10.0.0.1", {0: "192.168.0.1", 1: "192.168.0.1", 2: "192.168.2.1"})
    devices = table["server_list"][0]["device"]
    devices[0]["rank_id"] = 0
    devices[2]["rank_id"] = "7"
    table["server_count"] = "2"
    (work / "bad.json").write_text(json.dumps(table))
    proc = launcher(work, clean_env, "validate", "bad.json")
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        "bad.json: server_count: says 2 but server_list has 1 servers",
        "bad.json: server_list[0].device[0].rank_id: expected a string, got int 0",
        "bad.json: server_list[0].device[1].device_ip: duplicate device IP 192.168.0.1 (also server_list[0].device[0])",
        "bad.json: rank ids: expected 0..1, missing 0",
    ]
    (work / "broken.json").write_text('{"version": "1.0",\n "server_list": [}\n')
    assert_user_error(launcher(work, clean_env, "validate", "broken.json"), "broken.json:2: invalid JSON")
    (work / "empty.json").write_text("")
    assert_user_error(launcher(work, clean_env, "validate", "empty.json"), "empty.json: empty file")


def test_usage_errors_exit_2(work, clean_env):
    proc = launcher(work, clean_env)
    assert proc.returncode == 2 and "COMMAND" in proc.stderr
    proc = launcher(work, clean_env, "ranktable", "--server-cards", "12")
    assert proc.returncode == 2 and "invalid choice: 12" in proc.stderr
    assert_user_error(launcher(work, clean_env, "ranktable", "--order", "10.0.0.1"), "--order only applies with --mpi")


def test_run_subcommand_is_wired_to_launcher_run(work, clean_env):
    proc = launcher(work, clean_env, "run", "--backend", "cluster", "--nproc", "2", "--dry-run", "--",
                    sys.executable, "-c", "pass")
    assert proc.returncode == 0, proc.stderr
    assert "MS_WORKER_NUM" in proc.stdout and "MS_SCHED" in proc.stdout


def test_launcher_never_imports_mindspore():
    """The launcher must start fast and run where MindSpore is broken: no module of it may import MindSpore."""
    code = ("import pkgutil, importlib, sys, launcher\n"
            "for m in pkgutil.iter_modules(launcher.__path__):\n"
            "    if m.name != '__main__': importlib.import_module('launcher.' + m.name)\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] == 'mindspore'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
