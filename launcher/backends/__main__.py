"""`python -m launcher.backends single [--device-id N]`: shell lines that give a single-card worker its
environment (every other start-up mode's variables unset), for scripts/run_standalone.sh to `eval`."""
import shlex
import sys

from launcher import backends
from launcher.backends import single
from launcher.errors import ArgumentParser, integer


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m launcher.backends", description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=[single.NAME])
    parser.add_argument("--device-id", type=integer(ge=0), default=None)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    env = single.worker_env(args.device_id)
    print("unset " + " ".join(v for v in backends.all_variables()))
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
