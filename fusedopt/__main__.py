"""`python -m fusedopt <command>`: bench, demo, race, env."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "bench": ("fusedopt.benchmarks.bench", "throughput benchmark against torch.optim"),
    "demo": ("fusedopt.cli.demo", "train the digit classifier with every optimizer"),
    "race": ("fusedopt.cli.race", "optimizers racing on a 2-D loss landscape"),
    "env": ("fusedopt.cli.env", "versions, backends and why some are unavailable"),
}


def _usage() -> str:
    lines = ["usage: python -m fusedopt <command> [options]", "", "commands:"]
    lines += [f"  {name:<6} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`python -m fusedopt <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"fusedopt: unknown command {cmd!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[cmd][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
