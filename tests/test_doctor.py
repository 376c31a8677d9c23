"""Preflight checks: pure judgements, and `python -m launcher doctor` against real MindSpore, files and ports."""
import json
import socket
import subprocess
import sys

import pytest

from launcher import doctor, ranktable


def test_mindspore_judgement():
    out = json.dumps({"version": "2.10.0", "default_target": "CPU", "devices": {"Ascend": 8, "CPU": 1}})
    check = doctor.mindspore_check(0, "noise\n" + out + "\n", "")
    assert check.status == "PASS"
    assert check.detail == "2.10.0 importable, device target CPU, available: Ascend x8, CPU"
    check = doctor.mindspore_check(1, "", "Traceback...\nModuleNotFoundError: No module named 'mindspore'\n")
    assert check.line() == "FAIL  mindspore: import failed (exit 1): ModuleNotFoundError: No module named 'mindspore'"
    assert doctor.mindspore_check(0, "garbage", "").status == "FAIL"


def test_resources_judgement():
    gib = 2**30
    assert doctor.resources_check(2, 4, 8 * gib, 1.0).status == "PASS"
    over = doctor.resources_check(4, 2, 8 * gib, 1.0)
    assert over.status == "FAIL" and "fewer cores than workers" in over.detail and "0.50 per worker" in over.detail
    low = doctor.resources_check(2, 4, 3 * gib, 2.0)
    assert low.status == "FAIL" and "1.5 GiB per worker" in low.detail and "below --min-mem-gb 2" in low.detail


def test_hccn_and_ranktable_checks(tmp_path):
    assert doctor.hccn_check(str(tmp_path / "none.conf"), asked=False).status == "SKIP"
    assert doctor.hccn_check(str(tmp_path / "none.conf"), asked=True).status == "FAIL"
    conf = tmp_path / "hccn.conf"
    conf.write_text("address_0=192.168.0.1\naddress_1=192.168.0.1\n")
    check = doctor.hccn_check(str(conf), asked=False)
    assert check.status == "FAIL" and "hccn.conf:2: duplicate device IP 192.168.0.1" in check.detail
    conf.write_text("address_0=192.168.0.1\naddress_1=192.168.1.1\n")
    assert doctor.hccn_check(str(conf), asked=True).detail.endswith("2 device IPs (chips 0,1), no duplicates")
    assert doctor.ranktable_check(None).status == "SKIP"


def test_rank_table_against_hccn_conf():
    table = ranktable.server_table("10.0.0.1", {0: "192.168.0.1", 1: "192.168.1.1"})
    chips = {0: "192.168.0.1", 1: "192.168.1.1"}
    assert doctor.consistency_check(table, chips, ["10.0.0.1"]).status == "PASS"
    assert doctor.consistency_check(table, chips, ["10.0.0.2"]).detail == \
        "no server of the table (10.0.0.1) is this host (10.0.0.2)"
    check = doctor.consistency_check(table, {0: "192.168.0.1", 1: "192.168.1.9"}, ["10.0.0.1"])
    assert check.line() == ("FAIL  rank table vs hccn.conf: server 10.0.0.1 device 1 has device_ip 192.168.1.1 "
                            "but hccn.conf has address_1=192.168.1.9")
    assert "no address_1" in doctor.consistency_check(table, {0: "192.168.0.1"}, ["10.0.0.1"]).detail


@pytest.mark.processes
def test_probe_edges():
    assert doctor.probe_mindspore("/nonexistent/python").detail == "python interpreter '/nonexistent/python' not found"
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert doctor.try_bind(port)[0] is False
    assert doctor.try_bind(port) == (True, "")


def run_doctor(cwd, env, *args):
    return subprocess.run([sys.executable, "-m", "launcher", "doctor", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


@pytest.fixture()
def files(tmp_path):
    conf = tmp_path / "hccn.conf"
    conf.write_text("".join(f"address_{c}=192.168.{c}.1\n" for c in range(8)))
    table = ranktable.generate_local(server_ip="10.0.0.1", hccn_conf=conf, env={})
    ranktable.write_atomic(table, tmp_path / "table.json")
    return tmp_path


@pytest.mark.processes
def test_doctor_all_pass(files, clean_env):
    proc = run_doctor(files, clean_env, "--hccn-conf", "hccn.conf", "--rank-table", "table.json", "--nproc", "1",
                      "--server-ip", "10.0.0.1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["PASS"] * 6
    assert lines[0].startswith("PASS  mindspore: 2.10.0 importable, device target CPU")
    assert "PASS  rank table: table.json: valid, 1 servers, 8 ranks" in lines
    assert "PASS  rank table vs hccn.conf: server 10.0.0.1: 8 device IPs match" in lines
    assert lines[-1] == "all 6 checks passed (0 skipped)"


@pytest.mark.processes
def test_doctor_reports_each_failure(files, clean_env):
    (files / "hccn.conf").write_text("address_0=192.168.0.1\naddress_1 192.168.1.1\n")
    table = json.loads((files / "table.json").read_text())
    table["server_list"][0]["device"][3]["rank_id"] = 3
    (files / "table.json").write_text(json.dumps(table))
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_doctor(files, clean_env, "--hccn-conf", "hccn.conf", "--rank-table", "table.json",
                          "--port", str(port), "--nproc", "1000")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("PASS  mindspore")
    assert lines[1] == "FAIL  hccn.conf: hccn.conf:2: malformed line 'address_1 192.168.1.1' " \
                       "(expected key=value, e.g. address_0=192.168.100.101)"
    assert lines[2].startswith("FAIL  rank table: table.json: invalid rank table: "
                               "server_list[0].device[3].rank_id: expected a string, got int 3")
    assert lines[3].startswith(f"FAIL  port {port}: in use or not bindable")
    assert lines[4].startswith("FAIL  resources: 1000 workers") and "fewer cores than workers" in lines[4]
    assert lines[-1] == "4 of 5 checks failed"


@pytest.mark.processes
def test_doctor_bad_arguments(files, clean_env):
    proc = run_doctor(files, clean_env, "--nproc", "0")
    assert proc.returncode == 2 and proc.stderr.strip() == "error: python -m launcher doctor: argument --nproc: 0 must be at least 1"
