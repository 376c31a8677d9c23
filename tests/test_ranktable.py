"""Rank tables (device ranges, build, merge, validate, write/load) and cluster discovery (server IP, Slurm, MPI)."""
import copy
import json
import os

import pytest

from launcher import cluster, ranktable
from launcher.errors import UserError


def hccn_text(server: int, chips=range(8)) -> str:
    return "".join(f"address_{c}=192.168.{c}.{server}\nnetmask_{c}=255.255.255.0\n" for c in chips)


@pytest.fixture()
def conf(tmp_path):
    path = tmp_path / "hccn.conf"
    path.write_text(hccn_text(1))
    return path


# ---------------------------------------------------------------- device ranges

@pytest.mark.parametrize("spec, chips", [
    ("[0,8)", list(range(8))), ("[0, 4)", [0, 1, 2, 3]), ("[4,8)", [4, 5, 6, 7]), ("[0,3]", [0, 1, 2, 3]),
    ("0,1,2,3", [0, 1, 2, 3]), ("4-7", [4, 5, 6, 7]), ("3,1,2", [1, 2, 3]), (" 5 ", [5]), ("8-9,10", [8, 9, 10]),
])
def test_parse_devices(spec, chips):
    assert ranktable.parse_devices(spec) == chips


@pytest.mark.parametrize("spec, fragment", [
    ("", "empty device list"), ("[0,8", "malformed range"), ("[4,2)", "empty range"), ("[3,3)", "empty range"),
    ("a", "bad item 'a'"), ("0,,1", "bad item ''"), ("1,1", "device 1 listed twice"), ("7-4", "reversed span"),
    ("0-3,2", "device 2 listed twice"), ("-1", "bad item '-1'"),
    ("\u0663", "bad item"), ("0,\uff11", "bad item"), ("[0,1000000000000)", "malformed range"),
    ("[0,100000)", "than any server has"), ("0-99999", "than any server has"),
])
def test_parse_devices_rejects(spec, fragment):
    with pytest.raises(UserError, match="--device-num") as info:
        ranktable.parse_devices(spec)
    assert fragment in str(info.value) and repr(spec) in str(info.value)


@pytest.mark.parametrize("spec, cards", [
    ("[0,8)", 8), ("[0,4)", 8), ("[4,8)", 8), ("[0,2)", 8), ("6,7", 8), ("5", 8), ("[0,16)", 16), ("[2,10)", 16),
])
def test_device_sets_allowed(spec, cards):
    chips = ranktable.parse_devices(spec)
    assert ranktable.check_devices(chips, cards, spec=spec) == chips


@pytest.mark.parametrize("spec, cards, fragment", [
    ("[0,9)", 8, "device 8 out of range on a server with 8 cards (chips 0-7)"),
    ("[8,16)", 8, "device 8 out of range"),
    ("[0,17)", 16, "device 16 out of range on a server with 16 cards (chips 0-15)"),
    ("[2,6)", 8, "cross the 4-chip group boundary"),
    ("[0,5)", 8, "cross the 4-chip group boundary"),
    ("3,4", 8, "cross the 4-chip group boundary"),
    ("0-6", 8, "cross the 4-chip group boundary"),
])
def test_device_sets_rejected(spec, cards, fragment):
    with pytest.raises(UserError) as info:
        ranktable.check_devices(ranktable.parse_devices(spec), cards, spec=spec)
    assert fragment in str(info.value) and repr(spec) in str(info.value)


def test_visible_devices_filter():
    assert ranktable.select_devices(None, [4, 5, 6, 7]) == [4, 5, 6, 7]
    assert ranktable.select_devices("6,7", [4, 5, 6, 7]) == [6, 7]
    assert ranktable.select_devices(None, None) == list(range(8))
    assert ranktable.select_devices(None, None, 16) == list(range(16))
    assert ranktable.select_devices("[0,4)", [4, 5, 6, 7]) == [4, 5, 6, 7]  # hccl_tools: positions in the list
    hidden = r"--device-num '0,1': device 0 is not visible \(--visible-devices=4,5,6,7\)"
    with pytest.raises(UserError, match=hidden):
        ranktable.select_devices("0,1", [4, 5, 6, 7])
    with pytest.raises(UserError, match=r"ASCEND_RT_VISIBLE_DEVICES '4,9': device 9 out of range"):
        ranktable.select_devices(None, [4, 9], visible_what="ASCEND_RT_VISIBLE_DEVICES")
    with pytest.raises(UserError, match="cross the 4-chip group boundary"):
        ranktable.select_devices(None, [2, 3, 4])
    with pytest.raises(UserError, match=r"--device-num '2,2': a device is listed twice"):
        ranktable.select_devices([2, 2], None)
    with pytest.raises(UserError, match=r"--device-num '-1,0': device -1 out of range"):
        ranktable.select_devices([0, -1], None)
    with pytest.raises(UserError, match="--server-cards 12: expected 8 or 16"):
        ranktable.select_devices(None, None, 12)


# ---------------------------------------------------------------- building one server's table

def test_generate_local_exact_table(conf):
    table = ranktable.generate_local("[4,6)", server_ip="10.0.0.7", hccn_conf=conf, env={})
    assert table == {
        "version": "1.0", "server_count": "1",
        "server_list": [{"server_id": "10.0.0.7", "host_nic_ip": "reserve", "device": [
            {"device_id": "4", "device_ip": "192.168.4.1", "rank_id": "0"},
            {"device_id": "5", "device_ip": "192.168.5.1", "rank_id": "1"}]}],
        "status": "completed"}
    assert ranktable.validate(table) == []
    assert ranktable.workers(table) == [(0, "10.0.0.7", 4), (1, "10.0.0.7", 5)]


def test_generate_local_visible_devices_from_env_and_argument(conf):
    env = {"ASCEND_RT_VISIBLE_DEVICES": "0,1"}
    table = ranktable.generate_local(server_ip="10.0.0.7", hccn_conf=conf, env=env)
    assert [d["device_id"] for d in table["server_list"][0]["device"]] == ["0", "1"]
    table = ranktable.generate_local(visible_devices="4,5,6,7", server_ip="10.0.0.7", hccn_conf=conf, env=env)
    assert [d["device_id"] for d in table["server_list"][0]["device"]] == ["4", "5", "6", "7"]
    with pytest.raises(UserError, match=r"selects positions 0-3 of the visible devices, but "
                                        r"ASCEND_RT_VISIBLE_DEVICES=0,1 lists 2"):
        ranktable.generate_local("[0,4)", server_ip="10.0.0.7", hccn_conf=conf, env=env)
    with pytest.raises(UserError, match=r"device 2 is not visible \(ASCEND_RT_VISIBLE_DEVICES=0,1\)"):
        ranktable.generate_local("2,3", server_ip="10.0.0.7", hccn_conf=conf, env=env)


def test_generate_local_sixteen_cards(tmp_path):
    path = tmp_path / "hccn.conf"
    path.write_text(hccn_text(3, range(16)))
    table = ranktable.generate_local(server_ip="10.0.0.3", hccn_conf=path, server_cards=16, env={})
    assert [d["rank_id"] for d in table["server_list"][0]["device"]] == [str(i) for i in range(16)]
    assert ranktable.default_path(table).name == "hccl_16p_0-1-2-3-4-5-6-7-8-9-10-11-12-13-14-15_10.0.0.3.json"


def test_generate_local_errors(conf):
    with pytest.raises(UserError, match=r"--server-ip '10.0.0': not an IPv4 address"):
        ranktable.generate_local(server_ip="10.0.0", hccn_conf=conf, env={})
    conf.write_text(hccn_text(1, range(4)))
    with pytest.raises(UserError, match=r"hccn.conf: missing address_4"):
        ranktable.generate_local(server_ip="10.0.0.7", hccn_conf=conf, env={})


def test_generate_local_detects_a_non_loopback_server_ip(conf):
    table = ranktable.generate_local("[0,1)", hccn_conf=conf, env={})
    ip = table["server_list"][0]["server_id"]
    assert not ip.startswith("127.")
    assert ip in [a for addrs in cluster.interfaces()[0].values() for a in addrs]


# ---------------------------------------------------------------- merge

def server(ip: str, n: int = 2, tag: int = 0) -> dict:
    return ranktable.server_table(ip, {c: f"192.168.{c}.{tag}" for c in range(n)})


def test_merge_orders_servers_by_ip_numerically_and_renumbers_ranks():
    tables = [server("10.0.0.10", tag=10), server("10.0.0.9", tag=9), server("9.1.1.1", tag=1)]
    merged = ranktable.merge(tables)
    assert [s["server_id"] for s in merged["server_list"]] == ["9.1.1.1", "10.0.0.9", "10.0.0.10"]
    assert merged["server_count"] == "3"
    assert [(d["rank_id"], d["device_ip"]) for s in merged["server_list"] for d in s["device"]] == [
        ("0", "192.168.0.1"), ("1", "192.168.1.1"), ("2", "192.168.0.9"), ("3", "192.168.1.9"),
        ("4", "192.168.0.10"), ("5", "192.168.1.10")]
    assert ranktable.validate(merged) == []
    assert tables[0]["server_list"][0]["device"][0]["rank_id"] == "0"  # inputs untouched


def test_merge_explicit_order_and_merged_inputs():
    tables = [server("10.0.0.1", tag=1), server("10.0.0.2", tag=2)]
    merged = ranktable.merge(tables, order=["10.0.0.2", "10.0.0.1"])
    assert ranktable.workers(merged) == [(0, "10.0.0.2", 0), (1, "10.0.0.2", 1), (2, "10.0.0.1", 0),
                                         (3, "10.0.0.1", 1)]
    again = ranktable.merge([merged, server("10.0.0.3", tag=3)])
    assert [s["server_id"] for s in again["server_list"]] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert ranktable.default_path(again, "out").as_posix() == "out/hccl_6p_01_10.0.0.1.json"


@pytest.mark.parametrize("tables, order, fragment", [
    ([server("10.0.0.1", tag=1), server("10.0.0.1", tag=2)], None,
     "b.json: duplicate server 10.0.0.1 (also in a.json)"),
    ([server("10.0.0.1", tag=1), server("10.0.0.2", tag=1)], None, "b.json: duplicate device IP 192.168.0.1"),
    ([ranktable.merge([server("10.0.0.1", tag=1), server("10.0.0.2", tag=2)]), server("10.0.0.3", tag=2)], None,
     "b.json: duplicate device IP 192.168.0.2 (also in a.json server 10.0.0.2)"),
    ([server("10.0.0.1", tag=1), server("10.0.0.2", tag=2)], ["10.0.0.1"], "--order: server 10.0.0.2 is missing"),
    ([server("10.0.0.1", tag=1), server("10.0.0.2", tag=2)], ["10.0.0.1", "10.0.0.3"],
     "--order: server 10.0.0.3 is in none of the tables"),
    ([server("10.0.0.1", tag=1), server("10.0.0.2", tag=2)], ["10.0.0.1", "10.0.0.1", "10.0.0.2"], "listed twice"),
    ([], None, "no rank tables"),
])
def test_merge_rejects(tables, order, fragment):
    with pytest.raises(UserError) as info:
        ranktable.merge(tables, order=order, names=["a.json", "b.json"][:len(tables)] or None)
    assert fragment in str(info.value)


# ---------------------------------------------------------------- validate

def valid_two_servers() -> dict:
    return ranktable.merge([server("10.0.0.1", tag=1), server("10.0.0.2", tag=2)])


def broken(edit) -> list[str]:
    table = copy.deepcopy(valid_two_servers())
    edit(table)
    return ranktable.validate(table)


def test_ids_are_ascii_digits_to_the_end():
    """int() reads '\u0663' (Arabic-Indic three) and '0\\n'; a rank table's ids are ASCII digits only."""
    def edit(device_id, rank_id):
        def change(t):
            t["server_list"][0]["device"][0].update(device_id=device_id, rank_id=rank_id)
        return change

    assert broken(edit("\u0663", "0")) and broken(edit("0", "0\n")) and broken(edit(" 0", "0"))
    assert broken(edit("0", "0")) == []


def test_validate_accepts_valid_and_reports_each_problem():
    assert ranktable.validate(valid_two_servers()) == []

    def integer_ranks(t):
        for s in t["server_list"]:
            for d in s["device"]:
                d["rank_id"] = int(d["rank_id"])
    problems = broken(integer_ranks)
    assert len(problems) == 4 and problems[0] == "server_list[0].device[0].rank_id: expected a string, got int 0"

    def gap(t):
        t["server_list"][1]["device"][1]["rank_id"] = "5"
    assert broken(gap) == ["rank ids: expected 0..3, missing 3"]

    def dup_rank(t):
        t["server_list"][1]["device"][1]["rank_id"] = "0"
    assert broken(dup_rank)[0] == ("server_list[1].device[1].rank_id: duplicate rank 0 "
                                   "(also server_list[0].device[0])")

    def dup_ip(t):
        t["server_list"][1]["device"][0]["device_ip"] = t["server_list"][0]["device"][0]["device_ip"]
    assert broken(dup_ip) == ["server_list[1].device[0].device_ip: duplicate device IP 192.168.0.1 "
                              "(also server_list[0].device[0])"]

    def count(t):
        t["server_count"] = "3"
    assert broken(count) == ["server_count: says 3 but server_list has 2 servers"]

    def count_int(t):
        t["server_count"] = 2
    assert broken(count_int) == ["server_count: expected a string integer, got int 2"]

    def order(t):
        t["server_list"].reverse()
    assert broken(order) == ["server_list[1].device[0].rank_id: rank 0 listed after rank 3 "
                             "(servers and devices must be listed in rank order)"]

    def header(t):
        t["version"] = "1.2"
        del t["status"]
        t["server_list"][0]["server_id"] = "host-a"
        del t["server_list"][1]["device"][0]["device_id"]
    assert broken(header) == ['version: expected "1.0", got str "1.2"', 'status: missing (expected "completed")',
                              "server_list[0].server_id: 'host-a' is not an IPv4 address",
                              "server_list[1].device[0].device_id: missing"]

    assert ranktable.validate([]) == ["top level: expected a JSON object, got list []"]
    assert ranktable.validate({"version": "1.0", "server_count": "0", "server_list": [], "status": "completed"}) \
        == ["server_list: expected a non-empty list of servers"]


# ---------------------------------------------------------------- files

def test_default_path_write_and_load(conf, tmp_path):
    table = ranktable.generate_local(server_ip="10.0.0.7", hccn_conf=conf, env={})
    path = ranktable.default_path(table, tmp_path / "hccl_configs")
    assert path.name == "hccl_8p_01234567_10.0.0.7.json"
    assert ranktable.write_atomic(table, path) == path
    assert ranktable.load(path) == table
    assert json.loads(path.read_text()) == table
    assert os.listdir(path.parent) == [path.name]


def test_write_atomic_leaves_nothing_on_failure(tmp_path):
    bad = {"version": "1.0", "server_list": {object()}}
    with pytest.raises(TypeError):
        ranktable.write_atomic(bad, tmp_path / "t.json")
    assert os.listdir(tmp_path) == []


def test_load_errors_name_the_file(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{\n  "version": "1.0",\n  oops\n}\n')
    with pytest.raises(UserError, match=r"t.json:3: invalid JSON"):
        ranktable.load(path)
    path.write_text("")
    with pytest.raises(UserError, match=r"t.json: empty file"):
        ranktable.load(path)
    table = valid_two_servers()
    table["server_count"] = "5"
    table["status"] = "pending"
    path.write_text(json.dumps(table))
    with pytest.raises(UserError, match=r"t.json: invalid rank table: status: .*\(\+1 more; see"):
        ranktable.load(path)
    with pytest.raises(UserError, match=r"missing.json: rank table not found"):
        ranktable.load(tmp_path / "missing.json")


# ---------------------------------------------------------------- cluster discovery

def test_server_ip_candidates_never_loopback():
    addresses = {"lo": ["127.0.0.1"], "docker0": ["172.17.0.1"], "eth0": ["169.254.3.3", "10.1.2.3", "not-an-ip"],
                 "eth1": ["10.9.9.9"], "lo2": ["127.0.1.1"]}
    assert cluster.server_ip_candidates(addresses) == ["10.1.2.3", "10.9.9.9", "172.17.0.1", "169.254.3.3"]
    assert cluster.server_ip_candidates(addresses, up={"lo", "eth1"}) == ["10.9.9.9"]
    assert cluster.server_ip_candidates({"lo": ["127.0.0.1"]}) == []
    assert not cluster.detect_server_ip().startswith("127.")


@pytest.mark.parametrize("nodelist, host", [
    ("node07", "node07"), ("node[03-05,9],gpu1", "node03"), ("gpu1,node[1-2]", "gpu1"),
    ("rack[1-2]-n[007-008]", "rack1-n007"), ("a[5]", "a5"),
])
def test_first_host(nodelist, host):
    assert cluster.first_host(nodelist) == host


def test_first_host_malformed():
    with pytest.raises(UserError, match=r"SLURM_JOB_NODELIST 'node\[1-2': malformed"):
        cluster.first_host("node[1-2")


def test_node_info_from_slurm_mpi_or_single():
    slurm = {"SLURM_JOB_ID": "77", "SLURM_NODEID": "1", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "cn[010-011]",
             "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "OMPI_COMM_WORLD_RANK": "5",
             "OMPI_COMM_WORLD_SIZE": "8"}
    assert cluster.node_info(slurm) == cluster.NodeInfo(1, 2, "cn010", "slurm", 1, 2, 0)
    mpi = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}
    assert cluster.node_info(mpi) == cluster.NodeInfo(1, 2, None, "mpi", 1, 2, 1)
    assert cluster.node_info({"PMI_RANK": "0", "PMI_SIZE": "3"}).nnodes == 3
    assert cluster.node_info({}) == cluster.NodeInfo(0, 1, None, "single")
    with pytest.raises(UserError, match=r"SLURM_NNODES='two': expected an integer"):
        cluster.node_info({"SLURM_NODEID": "0", "SLURM_NNODES": "two"})
    with pytest.raises(UserError, match=r"SLURM_NODEID=2: not below SLURM_NNODES=2"):
        cluster.node_info({"SLURM_NODEID": "2", "SLURM_NNODES": "2"})
