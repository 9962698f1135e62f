"""The broker's main job in one run: workers share a token and lease unique slots.

`make demo` runs `ephemeral-broker run -- python examples/demo.py`: `run` starts a broker on a
fresh private socket and sets EPHEMERAL_PIPE for this script, which then
  1. mints a token and stores it for a minute;
  2. starts 6 worker processes; each reads the token, then leases one of 4 test accounts
     (the lowest free one; a worker that finds all 4 taken waits for one to be released),
     uses it for a moment, and releases it;
  3. checks that every worker read the same token and that no account ever had two holders.
When the script ends, `run` stops the broker and removes its socket.
"""

from __future__ import annotations

import itertools
import os
import secrets
import subprocess
import sys
import time

from ephemeral_broker_client import BrokerClient

WORKERS = 6
ACCOUNTS = 4


def say(line: str) -> None:
    # One write per line: print() writes text and newline apart, and workers share stdout.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def worker(number: int) -> None:
    with BrokerClient() as broker:  # the socket comes from $EPHEMERAL_PIPE
        token = broker.get("demo-token")
        with broker.lease(
            "accounts", f"worker-{number}", size=ACCOUNTS, wait_ms=30_000, ttl_ms=30_000
        ) as lease:
            start = time.time()
            say(
                f"worker {number} (pid {os.getpid()}) read token {token}, "
                f"holds account test-user-{lease.value}"
            )
            time.sleep(0.3)  # "use" the account
            broker.set(
                f"held-{number}",
                {"account": lease.value, "from": start, "to": time.time()},
                ttl_ms=60_000,
            )


def overlaps(intervals: list[dict[str, float]]) -> bool:
    ordered = sorted(intervals, key=lambda held: held["from"])
    return any(later["from"] < earlier["to"] for earlier, later in itertools.pairwise(ordered))


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(int(sys.argv[2]))
        return 0
    with BrokerClient() as broker:
        say(f"broker listening on {os.environ['EPHEMERAL_PIPE']}")
        token = secrets.token_hex(8)
        broker.set("demo-token", token, ttl_ms=60_000)
        say(f"stored token {token} with a 60 s TTL; {WORKERS} workers share {ACCOUNTS} accounts")
        workers = [
            subprocess.Popen([sys.executable, __file__, "--worker", str(n)]) for n in range(WORKERS)
        ]
        failed = sum(process.wait() != 0 for process in workers)
        held = [broker.get(f"held-{n}") for n in range(WORKERS) if not failed]
    by_account: dict[int, list[dict[str, float]]] = {}
    for record in held:
        by_account.setdefault(record["account"], []).append(record)
    clean = not failed and all(not overlaps(times) for times in by_account.values())
    say(
        f"{WORKERS - failed} of {WORKERS} workers read the token; accounts used: "
        f"{sorted(by_account)}; never two holders at once: {clean}"
    )
    return 0 if clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
