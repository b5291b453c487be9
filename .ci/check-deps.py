#!/usr/bin/env python3
"""The dependency rule, read from `cargo metadata`.

- p2p-deploy and p2p-runtime depend on p2p-core, never on a transport
  backend (p2p-iroh, p2p-libp2p, p2p-sim), directly or transitively.
- Backends depend on p2p-core only: never on each other, p2p-deploy or
  p2p-runtime.

Only normal and build dependencies count: tests, examples and benches
(dev-dependencies) may bring backends together. Exits 1 naming each
violation and the path that causes it.
"""
import json
import subprocess
import sys

BACKENDS = {"p2p-iroh", "p2p-libp2p", "p2p-sim"}
LAYERED = {"p2p-deploy", "p2p-runtime"}
SDK_UPPER = {"p2p-deploy", "p2p-runtime"}


def main() -> int:
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    members = set(meta["workspace_members"])
    name_of = {p["id"]: p["name"] for p in meta["packages"]}
    edges = {}
    for node in meta["resolve"]["nodes"]:
        out = []
        for dep in node["deps"]:
            kinds = {k["kind"] for k in dep["dep_kinds"]}
            if kinds & {None, "build"}:
                out.append(dep["pkg"])
        edges[node["id"]] = out

    def paths_from(start):
        """Every reachable package with one path to it (breadth first)."""
        seen = {start: [name_of[start]]}
        queue = [start]
        while queue:
            cur = queue.pop(0)
            for nxt in edges.get(cur, []):
                if nxt not in seen:
                    seen[nxt] = seen[cur] + [name_of[nxt]]
                    queue.append(nxt)
        return seen

    violations = []
    checked = []
    for pid in sorted(members, key=lambda i: name_of[i]):
        name = name_of[pid]
        if name in LAYERED:
            forbidden = BACKENDS
        elif name in BACKENDS:
            forbidden = (BACKENDS | SDK_UPPER) - {name}
        else:
            continue
        checked.append(name)
        for reached, path in paths_from(pid).items():
            if name_of[reached] in forbidden and reached in members:
                violations.append(f"{name} depends on {name_of[reached]}: {' -> '.join(path)}")
    for v in violations:
        print(f"dependency rule violated: {v}", file=sys.stderr)
    if violations:
        return 1
    print(f"dependency rule holds for: {', '.join(checked) or '(no layered crates yet)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
