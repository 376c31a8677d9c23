"""Launcher vs msrun on the same real 2-worker MindSpore CPU job, in the same run (interleaved).

Measures, per launcher:
- start-up: launch -> every worker past its first AllReduce (max over ranks of the job's own timestamp);
- failure-to-exit: a worker exits with code 3 after its first AllReduce -> the launcher process exits;
and records exit codes and whether any process of the job outlived its launcher.
Writes bench/results/launcher.json (median and every sample).

    python bench/bench_launcher.py [--repeats 2] [--nproc 2]
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
JOB = REPO / "tests" / "jobs" / "collective_job.py"
RESULTS = REPO / "bench" / "results" / "launcher.json"
sys.path.insert(0, str(REPO / "tests"))

from launcher.safe_write import write_json

from jobs.processes import job_processes, leftovers  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def command(tool: str, workdir: Path, nproc: int, fail: bool) -> list:
    job = [str(JOB), "--out", str(workdir)] + (["--fail-mode", "exit3", "--fail-rank", "1"] if fail else [])
    if tool == "ours":
        return [sys.executable, "-m", "launcher", "run", "--backend", "cluster", "-n", str(nproc),
                "--log-dir", str(workdir / "logs"), "--", sys.executable, *job]
    return [str(Path(sys.executable).parent / "msrun"), "--worker_num", str(nproc), "--local_worker_num",
            str(nproc), "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
            "--log_dir", str(workdir / "logs"), "--join", "True", *job]


def env() -> dict:
    """A clean environment; msrun finds `python` on PATH, so the venv's bin goes first."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MS_", "RANK_", "DEVICE_"))}
    clean["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{clean.get('PATH', '')}"
    clean["PYTHONUNBUFFERED"] = "1"
    return clean


def run_once(tool: str, nproc: int, fail: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench_{tool}_") as tmp:
        workdir = Path(tmp)
        started = time.time()
        proc = subprocess.run(command(tool, workdir, nproc, fail), env=env(), cwd=workdir,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
        exited = time.time()
        sample = {"exit_code": proc.returncode, "total_s": round(exited - started, 3),
                  "leftover_processes": len(leftovers(str(workdir), settle=0.5))}
        for straggler in job_processes(str(workdir)):
            straggler.kill()
        if fail:
            failed_at = json.loads((workdir / "failed_at.json").read_text())["time"]
            sample["failure_to_exit_s"] = round(exited - failed_at, 3)
        else:
            results = [json.loads((workdir / f"result_{r}.json").read_text()) for r in range(nproc)]
            sample["startup_s"] = round(max(r["first_allreduce"] for r in results) - started, 3)
            # where start-up goes (latest rank at each point): launcher + interpreter start, `import
            # mindspore`, cluster formation in init(), the first AllReduce
            marks = [("to_script_s", "started"), ("import_mindspore_s", "imported"),
                     ("cluster_init_s", "initialised"), ("first_allreduce_s", "first_allreduce")]
            previous = started
            for name, key in marks:
                latest = max(r[key] for r in results)
                sample[name] = round(latest - previous, 3)
                previous = latest
        return sample


def summary(samples: list, key: str) -> dict:
    values = [s[key] for s in samples if key in s]
    return {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()
    samples = {"ours": {"success": [], "failure": []}, "msrun": {"success": [], "failure": []}}
    for _ in range(args.repeats):
        for fail in (False, True):
            for tool in ("ours", "msrun"):
                sample = run_once(tool, args.nproc, fail)
                samples[tool]["failure" if fail else "success"].append(sample)
                print(tool, "failure" if fail else "success", sample, flush=True)
    report = {
        "job": f"tests/jobs/collective_job.py, {args.nproc} workers, MindSpore dynamic cluster on CPU",
        "machine": {"cpus": os.cpu_count(), "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "repeats": args.repeats,
        "targets": {"startup": "no slower than msrun", "failure_to_exit_s": 2.0},
        "results": {tool: {"startup_s": summary(runs["success"], "startup_s"),
                           "startup_breakdown_s": {k: summary(runs["success"], k)["median"] for k in
                                                   ("to_script_s", "import_mindspore_s", "cluster_init_s",
                                                    "first_allreduce_s")},
                           "failure_to_exit_s": summary(runs["failure"], "failure_to_exit_s"),
                           "failure_exit_codes": [s["exit_code"] for s in runs["failure"]],
                           "leftover_processes": sum(s["leftover_processes"] for s in runs["success"] + runs["failure"]),
                           "samples": runs}
                    for tool, runs in samples.items()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json(str(RESULTS), report, indent=2)
    print(json.dumps({tool: {k: v for k, v in r.items() if k != "samples"} for tool, r in report["results"].items()},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
