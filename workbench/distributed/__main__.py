"""`python -m workbench.distributed launch -n 2 --devices 2 SCRIPT [ARGS...]` (or `-m MODULE`):
run SCRIPT as a local multi-process JAX job (see `workbench.distributed.launch`)."""

from __future__ import annotations

import argparse
import sys

from workbench.distributed.launch import DEFAULT_TIMEOUT_S, LaunchError, launch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.distributed",
                                     description="Run a script as a multi-process JAX job on this machine.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("launch", help="start N processes of SCRIPT and wait for all of them")
    p.add_argument("-n", "--num-processes", type=int, required=True, help="processes to start")
    p.add_argument("--devices", type=int, default=1, help="CPU devices per process (JAX_NUM_CPU_DEVICES)")
    p.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds before the job is stopped")
    p.add_argument("-m", "--module", action="store_true", help="SCRIPT is a module name (python -m)")
    p.add_argument("script", metavar="SCRIPT")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to every process")
    args = parser.parse_args(argv)
    try:
        result = launch(args.script, args.num_processes, devices_per_process=args.devices,
                        args=args.args, module=args.module, port=args.port, timeout=args.timeout)
    except (LaunchError, FileNotFoundError, ValueError) as err:
        print(f"workbench.distributed: error: {err}", file=sys.stderr)
        return 1
    print(f"workbench.distributed: {args.num_processes} processes finished in {result.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
