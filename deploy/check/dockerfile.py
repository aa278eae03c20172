"""Checks the Dockerfile's shape without a Docker engine (none runs where CI does).

What it asserts, and why each matters:
- a multi-stage build whose final stage copies the binary from an earlier stage (no toolchain,
  sources or build cache in the image);
- the final stage runs as a non-root user (USER set, not root or uid 0);
- ENTRYPOINT in exec form, so grantd is PID 1 and receives SIGTERM itself: the drain on stop
  depends on it (a shell-form entrypoint puts /bin/sh in between, which does not forward it);
- the image holds the rule files and config where deploy/check/configs.py and the manifests
  expect them.

What it cannot show: that the image builds and starts. README: Operating grantd, Deploy.

Usage: dockerfile.py [DOCKERFILE]
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Where deploy/ expects the image's files (configs.py lays them out the same way).
EXPECTED_COPIES = {("rules", "/etc/grantd/rules"), ("examples/grantd.yaml", "/etc/grantd/config/grantd.yaml")}


def instructions(text: str) -> list:
    """(line number, INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    result, pending, start = [], "", 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        if stripped.startswith("#"):
            continue
        full = (pending + stripped).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        result.append((start, word.upper(), rest.strip()))
    return result


def check(path: Path) -> list:
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    stages = []  # [(name, [(line, instruction, args)])]
    for line, word, args in instructions(path.read_text()):
        if word == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append((name, [(line, word, args)]))
        elif stages:
            stages[-1][1].append((line, word, args))
    if len(stages) < 2:
        return [f"{where}: expected a multi-stage build, found {len(stages)} stage(s)"]
    earlier = {name for name, _ in stages[:-1]}
    final = stages[-1][1]
    problems = []
    if not any(w == "COPY" and any(a.startswith("--from=") and a[7:] in earlier for a in args.split()) for _, w, args in final):
        problems.append(f"{where}: the final stage copies nothing from an earlier stage")
    users = [(line, args.split(":")[0]) for line, w, args in final if w == "USER"]
    if not users:
        problems.append(f"{where}: the final stage sets no USER, so it runs as root")
    elif users[-1][1] in ("root", "0"):
        problems.append(f"{where}:{users[-1][0]}: the final stage runs as root")
    entry = [(line, args) for line, w, args in final if w == "ENTRYPOINT"]
    try:
        exec_form = bool(entry) and isinstance(json.loads(entry[-1][1]), list)
    except json.JSONDecodeError:
        exec_form = False
    if not exec_form:
        problems.append(f"{where}: the final stage needs an exec-form ENTRYPOINT [\"...\"] (SIGTERM must reach grantd)")
    copies = {tuple(a for a in args.split() if not a.startswith("--")) for _, w, args in final if w == "COPY"}
    for source, target in sorted(EXPECTED_COPIES - copies):
        problems.append(f"{where}: the final stage does not COPY {source} {target}, where deploy/ expects it")
    return problems


def main() -> int:
    path = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT / "Dockerfile"
    problems = check(path)
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    if not problems:
        print(f"ok   {path.name}: multi-stage, final stage non-root, exec-form entrypoint, files where deploy/ expects them")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
