"""Version "1.0" HCCL rank tables: build, merge, validate (pure functions over dicts) + atomic write.

Conventions (docs/launcher.md, "Rank tables"):
- every value is a string; rank ids are global, 0..N-1, increasing through the server list;
- device ids are physical chip numbers on their server; visible devices filter them, except that
  hccl_tools' range spelling "[first,end)" selects positions in the visible list, as hccl_tools.py does;
- merged tables list servers by server IP (numerically) unless an explicit order is given, and ranks
  are renumbered in that order, devices of one server in their original rank order.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path

from launcher import cluster, hccn
from launcher.errors import UserError, read_user_file
from launcher.safe_write import write_text

VERSION = "1.0"
SERVER_CARDS = (8, 16)
GROUP_SIZE = 4  # 8-card servers: chips 0-3 and 4-7 form two HCCS groups

# ASCII digits to the very end: \d takes other scripts' digits and $ a trailing newline, and int() takes both
_INT = re.compile(r"[0-9]{1,9}\Z")
_HALF_OPEN = re.compile(r"\[\s*([0-9]{1,9})\s*,\s*([0-9]{1,9})\s*([)\]])\Z")
_SPAN = re.compile(r"([0-9]{1,9})\s*-\s*([0-9]{1,9})\Z")
MAX_CHIPS = 1024  # far beyond any server's chips; a list of 10^11 ids would exhaust memory first


def parse_devices(spec: str, what: str = "--device-num") -> list[int]:
    """Chip ids from "[0,8)", "[0,7]", "0,1,2,3", "4-7" or "0-3,6"; sorted, no duplicates."""
    text = spec.strip()
    if not text:
        raise UserError(f"{what} {spec!r}: empty device list (expected e.g. [0,8) or 0,1,2,3)")
    bracket = _HALF_OPEN.match(text)
    if bracket is not None:
        lo, hi = int(bracket.group(1)), int(bracket.group(2))
        hi = hi if bracket.group(3) == ")" else hi + 1
        if hi <= lo:
            raise UserError(f"{what} {spec!r}: empty range (expected [first,end) with first < end)")
        if hi - lo > MAX_CHIPS:
            raise UserError(f"{what} {spec!r}: {hi - lo} chips, more than any server has (at most {MAX_CHIPS})")
        return list(range(lo, hi))
    if text.startswith("["):
        raise UserError(f"{what} {spec!r}: malformed range (expected [first,end) like [0,8))")
    chips: list[int] = []
    for item in text.split(","):
        item = item.strip()
        span = _SPAN.match(item)
        if span is not None:
            lo, hi = int(span.group(1)), int(span.group(2))
            if hi < lo:
                raise UserError(f"{what} {spec!r}: reversed span {item!r} (expected first-last with first <= last)")
            if hi - lo + 1 + len(chips) > MAX_CHIPS:
                raise UserError(f"{what} {spec!r}: more chips than any server has (at most {MAX_CHIPS})")
            chips.extend(range(lo, hi + 1))
        elif _INT.match(item):
            chips.append(int(item))
        else:
            raise UserError(f"{what} {spec!r}: bad item {item!r} (expected a chip number like 3 or a span like 4-7)")
    duplicates = sorted({c for c in chips if chips.count(c) > 1})
    if duplicates:
        raise UserError(f"{what} {spec!r}: device {duplicates[0]} listed twice")
    return sorted(chips)


def check_devices(chips: list[int], server_cards: int = 8, what: str = "--device-num",
                  spec: str | None = None) -> list[int]:
    """Reject chips outside the server and, on 8-card servers, sets crossing the 4-chip group boundary."""
    shown = f"{what} {spec!r}" if spec is not None else f"{what} {','.join(map(str, chips))!r}"
    if not chips:
        raise UserError(f"{shown}: no devices selected")
    if len(set(chips)) != len(chips):
        raise UserError(f"{shown}: a device is listed twice")
    outside = [c for c in chips if not 0 <= c < server_cards]
    if outside:
        raise UserError(f"{shown}: device {outside[0]} out of range on a server with {server_cards} cards "
                        f"(chips 0-{server_cards - 1})")
    if server_cards == 8 and len(chips) != 8:
        groups = {c // GROUP_SIZE for c in chips}
        if len(groups) > 1:
            raise UserError(f"{shown}: devices cross the 4-chip group boundary (on 8-card servers use chips "
                            "within 0-3 or within 4-7, or all of 0-7)")
    return chips


def is_position_range(spec: str) -> bool:
    """hccl_tools' spelling "[first,end)": with visible devices it selects positions in their list."""
    match = _HALF_OPEN.match(spec.strip())
    return match is not None and match.group(3) == ")"


def visible_positions(spec: str, visible: list[int], visible_what: str) -> list[int]:
    """hccl_tools.py's rule: "[0,4)" with visible devices 4,5,6,7 means positions 0-3 of that list, i.e.
    chips 4,5,6,7 (a rank table's device_id is the physical chip)."""
    positions = parse_devices(spec)
    if positions[-1] >= len(visible):
        raise UserError(f"--device-num {spec!r}: selects positions {positions[0]}-{positions[-1]} of the visible "
                        f"devices, but {visible_what}={','.join(map(str, visible))} lists {len(visible)}")
    return [visible[p] for p in positions]


def select_devices(device_spec: str | list[int] | None, visible: list[int] | None, server_cards: int = 8,
                   visible_what: str = "--visible-devices") -> list[int]:
    """The chips this server contributes: the requested ones (default: all visible) checked against the server."""
    if server_cards not in SERVER_CARDS:
        raise UserError(f"--server-cards {server_cards}: expected 8 or 16")
    if visible is not None:
        outside = [c for c in visible if not 0 <= c < server_cards]
        if outside:
            raise UserError(f"{visible_what} {','.join(map(str, visible))!r}: device {outside[0]} out of range "
                            f"on a server with {server_cards} cards (chips 0-{server_cards - 1})")
    if device_spec is None:
        chips = sorted(visible) if visible is not None else list(range(server_cards))
        return check_devices(chips, server_cards, visible_what if visible is not None else "devices")
    if isinstance(device_spec, str) and visible is not None and is_position_range(device_spec):
        chips = visible_positions(device_spec, sorted(visible), visible_what)
        return check_devices(chips, server_cards, f"--device-num {device_spec!r} of {visible_what}")
    if isinstance(device_spec, str):
        chips, spec = parse_devices(device_spec), device_spec
    else:
        chips, spec = sorted(int(c) for c in device_spec), None
    check_devices(chips, server_cards, "--device-num", spec)
    if visible is not None:
        hidden = [c for c in chips if c not in visible]
        if hidden:
            raise UserError(f"--device-num {device_spec!r}: device {hidden[0]} is not visible "
                            f"({visible_what}={','.join(map(str, visible))})")
    return chips


def server_table(server_ip: str, device_ips: dict[int, str], first_rank: int = 0) -> dict:
    """One server's version "1.0" table, ranks first_rank.. in chip order."""
    devices = [{"device_id": str(chip), "device_ip": device_ips[chip], "rank_id": str(first_rank + i)}
               for i, chip in enumerate(sorted(device_ips))]
    return {"version": VERSION, "server_count": "1",
            "server_list": [{"server_id": server_ip, "device": devices, "host_nic_ip": "reserve"}],
            "status": "completed"}


def generate_local(device_ids=None, visible_devices=None, server_ip=None, hccn_conf=hccn.DEFAULT_HCCN_CONF,
                   server_cards: int = 8, ip_source: str = "auto", env=None) -> dict:
    """This server's rank table: devices (spec or list), visible devices (list/str, default
    ASCEND_RT_VISIBLE_DEVICES), device IPs from hccn_tool or hccn.conf, server IP given or detected."""
    env = os.environ if env is None else env
    visible_what = "--visible-devices"
    if visible_devices is None and env.get("ASCEND_RT_VISIBLE_DEVICES", "").strip():
        visible_devices, visible_what = env["ASCEND_RT_VISIBLE_DEVICES"], "ASCEND_RT_VISIBLE_DEVICES"
    if isinstance(visible_devices, str):
        visible = parse_devices(visible_devices, visible_what)
    else:
        visible = None if visible_devices is None else sorted(int(c) for c in visible_devices)
    chips = select_devices(device_ids, visible, server_cards, visible_what)
    if server_ip is None:
        server_ip = cluster.detect_server_ip()
    else:
        checked = hccn.parse_ipv4(server_ip)
        if checked is None:
            raise UserError(f"--server-ip {server_ip!r}: not an IPv4 address")
        server_ip = checked
    ips = hccn.device_ips(chips, hccn_conf, ip_source)
    return server_table(server_ip, ips)


def merge(tables: list[dict], order: list[str] | None = None, names: list[str] | None = None) -> dict:
    """One cluster table from server tables: servers by IP (or `order`), ranks renumbered 0..N-1."""
    names = names or [f"table {i + 1}" for i in range(len(tables))]
    if not tables:
        raise UserError("merge: no rank tables given")
    servers: list[dict] = []
    origin: dict[str, str] = {}
    device_origin: dict[str, str] = {}
    for table, name in zip(tables, names):
        problems = validate(table)
        if problems:
            raise UserError(f"{name}: invalid rank table: {problems[0]}")
        for server in table["server_list"]:
            sid = server["server_id"]
            if sid in origin:
                raise UserError(f"{name}: duplicate server {sid} (also in {origin[sid]})")
            origin[sid] = name
            where = f"{name} server {sid}" if len(table["server_list"]) > 1 else name
            for dev in server["device"]:
                if dev["device_ip"] in device_origin:
                    raise UserError(f"{where}: duplicate device IP {dev['device_ip']} "
                                    f"(also in {device_origin[dev['device_ip']]})")
                device_origin[dev["device_ip"]] = where
            servers.append(server)
    merged, rank = [], 0
    for server in _ordered(servers, order):
        devices = []
        for dev in sorted(server["device"], key=lambda d: int(d["rank_id"])):
            devices.append({"device_id": dev["device_id"], "device_ip": dev["device_ip"], "rank_id": str(rank)})
            rank += 1
        merged.append({"server_id": server["server_id"], "device": devices,
                       "host_nic_ip": server.get("host_nic_ip", "reserve")})
    return {"version": VERSION, "server_count": str(len(merged)), "server_list": merged, "status": "completed"}


def _ordered(servers: list[dict], order: list[str] | None) -> list[dict]:
    """Servers by IP numerically, or exactly in `order` (every server once)."""
    if order is None:
        return sorted(servers, key=lambda s: int(ipaddress.IPv4Address(s["server_id"])))
    by_id = {s["server_id"]: s for s in servers}
    wanted = [hccn.parse_ipv4(ip.strip()) or ip.strip() for ip in order]
    unknown = [ip for ip in wanted if ip not in by_id]
    if unknown:
        raise UserError(f"--order: server {unknown[0]} is in none of the tables (servers: {', '.join(by_id)})")
    if len(set(wanted)) != len(wanted):
        raise UserError(f"--order: a server is listed twice in {','.join(order)!r}")
    left_out = [sid for sid in by_id if sid not in wanted]
    if left_out:
        raise UserError(f"--order: server {left_out[0]} is missing (list every server once)")
    return [by_id[ip] for ip in wanted]


def _is_str_int(value) -> bool:
    return isinstance(value, str) and _INT.match(value) is not None


def _describe(value) -> str:
    return f"{type(value).__name__} {json.dumps(value)}"


def validate(table) -> list[str]:
    """Everything wrong with a version "1.0" table, one message per problem; [] when valid."""
    if not isinstance(table, dict):
        return [f"top level: expected a JSON object, got {_describe(table)[:60]}"]
    problems: list[str] = []
    if table.get("version") != VERSION:
        problems.append(f"version: expected \"1.0\", got {_describe(table.get('version'))}"
                        if "version" in table else "version: missing (expected \"1.0\")")
    if table.get("status") != "completed":
        problems.append(f"status: expected \"completed\", got {_describe(table.get('status'))}"
                        if "status" in table else "status: missing (expected \"completed\")")
    servers = table.get("server_list")
    if not isinstance(servers, list) or not servers:
        problems.append("server_list: expected a non-empty list of servers"
                        if "server_list" in table else "server_list: missing")
        servers = []
    count = table.get("server_count")
    if not _is_str_int(count):
        problems.append(f"server_count: expected a string integer, got {_describe(count)}"
                        if "server_count" in table else "server_count: missing")
    elif servers and int(count) != len(servers):
        problems.append(f"server_count: says {count} but server_list has {len(servers)} servers")
    ranks: list[tuple[int, str]] = []
    server_seen: dict[str, int] = {}
    ip_seen: dict[str, str] = {}
    for s_idx, server in enumerate(servers):
        at = f"server_list[{s_idx}]"
        if not isinstance(server, dict):
            problems.append(f"{at}: expected an object, got {_describe(server)[:60]}")
            continue
        sid = server.get("server_id")
        if not isinstance(sid, str):
            problems.append(f"{at}.server_id: expected a string IP, got {_describe(sid)}"
                            if "server_id" in server else f"{at}.server_id: missing")
        else:
            if hccn.parse_ipv4(sid) is None:
                problems.append(f"{at}.server_id: {sid!r} is not an IPv4 address")
            if sid in server_seen:
                problems.append(f"{at}.server_id: duplicate server {sid} (also server_list[{server_seen[sid]}])")
            server_seen.setdefault(sid, s_idx)
        if "host_nic_ip" in server and not isinstance(server["host_nic_ip"], str):
            problems.append(f"{at}.host_nic_ip: expected a string, got {_describe(server['host_nic_ip'])}")
        devices = server.get("device")
        if not isinstance(devices, list) or not devices:
            problems.append(f"{at}.device: expected a non-empty list of devices"
                            if "device" in server else f"{at}.device: missing")
            continue
        chip_seen: set[str] = set()
        for d_idx, dev in enumerate(devices):
            dat = f"{at}.device[{d_idx}]"
            if not isinstance(dev, dict):
                problems.append(f"{dat}: expected an object, got {_describe(dev)[:60]}")
                continue
            for key in ("device_id", "device_ip", "rank_id"):
                if key not in dev:
                    problems.append(f"{dat}.{key}: missing")
                elif not isinstance(dev[key], str):
                    problems.append(f"{dat}.{key}: expected a string, got {_describe(dev[key])}")
            chip, ip, rank = dev.get("device_id"), dev.get("device_ip"), dev.get("rank_id")
            if isinstance(chip, str):
                if not _is_str_int(chip):
                    problems.append(f"{dat}.device_id: {chip!r} is not a chip number")
                elif chip in chip_seen:
                    problems.append(f"{dat}.device_id: device {chip} listed twice on this server")
                chip_seen.add(chip)
            if isinstance(ip, str):
                if hccn.parse_ipv4(ip) is None:
                    problems.append(f"{dat}.device_ip: {ip!r} is not an IPv4 address")
                elif ip in ip_seen:
                    problems.append(f"{dat}.device_ip: duplicate device IP {ip} (also {ip_seen[ip]})")
                ip_seen.setdefault(ip, dat)
            if isinstance(rank, str):
                if _is_str_int(rank):
                    ranks.append((int(rank), dat))
                else:
                    problems.append(f"{dat}.rank_id: {rank!r} is not a non-negative integer")
    problems.extend(_rank_problems(ranks))
    return problems


def _rank_problems(ranks: list[tuple[int, str]]) -> list[str]:
    """Rank ids must be exactly 0..N-1 and increase through the server and device lists."""
    problems = []
    seen: dict[int, str] = {}
    for rank, where in ranks:
        if rank in seen:
            problems.append(f"{where}.rank_id: duplicate rank {rank} (also {seen[rank]})")
        seen.setdefault(rank, where)
    missing = sorted(set(range(len(ranks))) - set(seen))
    if missing:
        problems.append(f"rank ids: expected 0..{len(ranks) - 1}, missing {','.join(map(str, missing[:10]))}"
                        + (" ..." if len(missing) > 10 else ""))
    listed = [r for r, _ in ranks]
    if not problems and listed != sorted(listed):
        first = next(i for i in range(1, len(listed)) if listed[i] < listed[i - 1])
        problems.append(f"{ranks[first][1]}.rank_id: rank {listed[first]} listed after rank {listed[first - 1]} "
                        "(servers and devices must be listed in rank order)")
    return problems


def workers(table: dict) -> list[tuple[int, str, int]]:
    """(rank_id, server_ip, device_id) of every device, by rank."""
    rows = [(int(dev["rank_id"]), server["server_id"], int(dev["device_id"]))
            for server in table["server_list"] for dev in server["device"]]
    return sorted(rows)


def default_path(table: dict, out_dir: str | Path = "hccl_configs") -> Path:
    """hccl_configs/hccl_<n>p_<ids>_<ip>.json, ids and ip of the first server (classic naming)."""
    first = table["server_list"][0]
    chips = [int(dev["device_id"]) for dev in first["device"]]
    ids = "".join(map(str, chips)) if max(chips) < 10 else "-".join(map(str, chips))
    total = sum(len(server["device"]) for server in table["server_list"])
    return Path(out_dir) / f"hccl_{total}p_{ids}_{first['server_id']}.json"


def dumps(table: dict) -> str:
    return json.dumps(table, indent=4) + "\n"


def write_atomic(table: dict, path) -> Path:
    """Write the table through launcher.safe_write (temporary file, fsync, rename): readers never see half a
    table, and a failed write is one line naming the file."""
    text = dumps(table)
    write_text(str(path), text)
    return Path(path)


def load(path) -> dict:
    """Read and validate a rank table; UserError naming the file on unreadable, bad JSON or invalid tables."""
    table = read_json(path)
    problems = validate(table)
    if problems:
        more = f" (+{len(problems) - 1} more; see 'python -m launcher validate {path}')" if len(problems) > 1 else ""
        raise UserError(f"{path}: invalid rank table: {problems[0]}{more}")
    return table


def read_json(path):
    """Parsed JSON of `path`; UserError naming file and line for unreadable or malformed files."""
    text = read_user_file(path, "rank table")
    if not text.strip():
        raise UserError(f"{path}: empty file (expected a JSON rank table)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply (expected a rank table: an object with a "
                        f"server_list)") from None
