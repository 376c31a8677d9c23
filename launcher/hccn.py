"""Device IPs of this server: from `hccn_tool` when installed, else from hccn.conf.

The parser is a pure function over the file's text so that every malformed line can be reported
with its file name and line number instead of the KeyError/IndexError older tools die with.
"""
from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from pathlib import Path

from launcher.errors import UserError, read_user_file

DEFAULT_HCCN_CONF = "/etc/hccn.conf"

_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)\s*=\s*(\S*)\s*$")
_ADDRESS_KEY = re.compile(r"^address_(\d+)$")
_TOOL_IP = re.compile(r"^\s*ipaddr\s*:\s*(\S+)\s*$", re.MULTILINE)


def parse_ipv4(value: str) -> str | None:
    """Canonical dotted IPv4 text, or None when `value` is not an IPv4 address."""
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        return None


def parse_hccn_conf(text: str, source: str = DEFAULT_HCCN_CONF) -> dict[int, str]:
    """Map chip -> device IP from hccn.conf text; UserError naming `source`:line for any bad line.

    Only address_<chip> lines matter; the other per-chip settings hccn_tool writes there (netmask_,
    netdetect_, gateway_, send_arp_status_, ...) are skipped so that new driver keys do not break us.
    """
    chips: dict[int, str] = {}
    first_line_of_chip: dict[int, int] = {}
    chip_of_ip: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{lineno}"
        match = _LINE.match(line)
        if match is None:
            raise UserError(f"{where}: malformed line {line!r} (expected key=value, e.g. address_0=192.168.100.101)")
        key, value = match.groups()
        if not key.startswith("address"):
            continue
        chip_match = _ADDRESS_KEY.match(key)
        if chip_match is None:
            raise UserError(f"{where}: bad key {key!r} (expected address_<chip> with an integer chip number)")
        chip = int(chip_match.group(1))
        ip = parse_ipv4(value)
        if ip is None:
            raise UserError(f"{where}: invalid IP address {value!r} for {key} (expected IPv4 like 192.168.100.101)")
        if chip in chips:
            raise UserError(f"{where}: duplicate {key} (already set on line {first_line_of_chip[chip]})")
        if ip in chip_of_ip:
            raise UserError(f"{where}: duplicate device IP {ip} for {key} (already used by "
                            f"address_{chip_of_ip[ip]})")
        chips[chip] = ip
        first_line_of_chip[chip] = lineno
        chip_of_ip[ip] = chip
    if not chips:
        raise UserError(f"{source}: no address_<chip>=<ip> lines (empty or not an hccn.conf file)")
    return chips


def read_hccn_conf(path: str | Path = DEFAULT_HCCN_CONF) -> dict[int, str]:
    """Parse hccn.conf at `path`; a missing or unreadable file is a UserError naming it."""
    text = read_user_file(path, "hccn.conf", " (pass --hccn-conf PATH)")
    return parse_hccn_conf(text, str(path))


def parse_hccn_tool_output(text: str, chip: int) -> str:
    """The `ipaddr:` value printed by `hccn_tool -i <chip> -ip -g`."""
    match = _TOOL_IP.search(text)
    if match is None:
        raise UserError(f"hccn_tool -i {chip} -ip -g: no 'ipaddr:' line in its output {text.strip()[:80]!r}")
    ip = parse_ipv4(match.group(1))
    if ip is None:
        raise UserError(f"hccn_tool -i {chip} -ip -g: invalid IP address {match.group(1)!r}")
    return ip


def query_hccn_tool(chip: int, tool: str = "hccn_tool") -> str:
    """Ask the driver tool for one chip's device IP."""
    cmd = [tool, "-i", str(chip), "-ip", "-g"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"{' '.join(cmd)}: cannot run ({exc})") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise UserError(f"{' '.join(cmd)}: exit code {proc.returncode}" + (f": {detail[0]}" if detail else ""))
    return parse_hccn_tool_output(proc.stdout, chip)


def hccn_tool_path() -> str | None:
    """Full path of hccn_tool when it is on PATH (Ascend driver installed)."""
    return shutil.which("hccn_tool")


def device_ips(chips: list[int], hccn_conf: str | Path = DEFAULT_HCCN_CONF,
               source: str = "auto") -> dict[int, str]:
    """Device IP of each chip. source: "tool" (hccn_tool), "file" (hccn.conf) or "auto" (tool if on PATH)."""
    if source not in ("auto", "tool", "file"):
        raise UserError(f"device IP source {source!r}: expected auto, tool or file")
    tool = hccn_tool_path() if source in ("auto", "tool") else None
    if source == "tool" and tool is None:
        raise UserError("hccn_tool not found on PATH (use the hccn.conf file instead: --hccn-conf PATH)")
    if tool is not None:
        ips = {chip: query_hccn_tool(chip, tool) for chip in chips}
        origin = "hccn_tool"
    else:
        table = read_hccn_conf(hccn_conf)
        missing = [chip for chip in chips if chip not in table]
        if missing:
            raise UserError(f"{hccn_conf}: missing address_{missing[0]} (device {missing[0]} is requested; "
                            f"file has chips {','.join(map(str, sorted(table)))})")
        ips = {chip: table[chip] for chip in chips}
        origin = str(hccn_conf)
    seen: dict[str, int] = {}
    for chip, ip in ips.items():
        if ip in seen:
            raise UserError(f"{origin}: duplicate device IP {ip} for chips {seen[ip]} and {chip}")
        seen[ip] = chip
    return ips
