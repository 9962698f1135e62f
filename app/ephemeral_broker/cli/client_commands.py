"""The client commands of the command line: get, set, del, list, incr, touch, lease, renew,
release, ping, health, stats, metrics.

Output is made for shell pipelines: `get` prints the value as JSON (a string in quotes, so that
the string "5" and the number 5 differ; `--raw` prints a string as it is), `list` prints one
key a line, `--json` prints the broker's whole answer. Errors are one line on stderr, in the
command line's words (cli_messages.py): what happened to which key or pool, and what to do.
Exit codes: 0 success; 1 the operation failed (missing key, pool exhausted, a condition that
does not hold, store full…); 2 usage: bad arguments, no socket, a request the broker refused
as malformed, or auth failed; 3 the broker cannot be reached (no socket, nobody listening,
draining, timed out).

The `client` package (and httpx with it) is imported only when a client command runs, so
that `serve` does not pay for it, and nothing here imports the server stack.
"""

from __future__ import annotations

import argparse
import os
import socket as socket_module
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ephemeral_broker_client import BrokerClient, BrokerError, Lease, LeaseGrant

# Broker error codes that mean the request itself was wrong (or the credentials), which on
# the command line is a usage or settings error; every other code is the operation failing.
USAGE_CODES: Final = frozenset(
    {
        "invalid_json",
        "bad_request",
        "invalid_key",
        "invalid_ttl",
        "ttl_required",
        "validation_error",
        "unsupported_encoding",
        "route_not_found",
        "method_not_allowed",
        "auth_failed",
    }
)

Action = Callable[["BrokerClient", argparse.Namespace], "bytes | str | None"]


class UsageError(Exception):
    """A problem with the command's own arguments, found before anything is sent."""


def cli_worker_id() -> str:
    """The worker id of `lease`/`release` without --worker: `$PYTEST_XDIST_WORKER`, else
    `<hostname>:<parent pid>` — the invoking shell's pid, so that a script's `lease` and its
    later `release` name the same worker although each runs in a new process."""
    return os.environ.get("PYTEST_XDIST_WORKER") or (
        f"{socket_module.gethostname()}:{os.getppid()}"
    )


def _json(value: Any, *, indent: bool = False) -> bytes:
    import orjson

    return orjson.dumps(value, option=orjson.OPT_INDENT_2 if indent else 0)


# ---- the commands --------------------------------------------------------------------------


def _get(broker: BrokerClient, args: argparse.Namespace) -> bytes | str:
    item = broker.get_item(args.key, wait_ms=args.wait)
    if args.json:
        return _json(
            {
                "key": item.key,
                "value": item.value,
                "version": item.version,
                "expires_at": item.expires_at,
            }
        )
    # JSON by default: printed raw, the string "5" and the number 5 would look the same, and
    # a script could not tell which one `incr` will refuse.
    return item.value if args.raw and isinstance(item.value, str) else _json(item.value)


def _parse_json_value(text: str, key: str) -> Any:
    import orjson

    raw = sys.stdin.buffer.read() if text == "-" else text.encode("utf-8", "surrogateescape")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        source = "stdin" if text == "-" else "VALUE"
        raise UsageError(f"{source} for key {key!r} is not valid JSON: {exc}") from None


def _set(broker: BrokerClient, args: argparse.Namespace) -> str:
    if args.if_absent and args.if_version is not None:
        raise UsageError(
            "--if-absent and --if-version exclude each other: a key that must not "
            "exist cannot be at a version"
        )
    value = _parse_json_value(args.value, args.key) if args.json_value else args.value
    return str(
        broker.set(args.key, value, args.ttl, if_absent=args.if_absent, if_version=args.if_version)
    )


def _del(broker: BrokerClient, args: argparse.Namespace) -> bytes:
    return _json(broker.delete(args.key))


def _list(broker: BrokerClient, args: argparse.Namespace) -> bytes | str | None:
    infos = broker.list(args.prefix, limit=args.limit)
    if args.json:
        return _json(
            [
                {"key": i.key, "version": i.version, "expires_at": i.expires_at, "size": i.size}
                for i in infos
            ]
        )
    return "\n".join(info.key for info in infos) if infos else None


def _incr(broker: BrokerClient, args: argparse.Namespace) -> str:
    return str(broker.incr(args.key, args.by, args.ttl))


def _touch(broker: BrokerClient, args: argparse.Namespace) -> str:
    return str(broker.touch(args.key, args.ttl))


def _grant_output(grant: Lease | LeaseGrant, args: argparse.Namespace) -> bytes | str:
    if args.json:
        return _json(
            {
                "pool": grant.pool,
                "worker_id": grant.worker_id,
                "value": grant.value,
                "token": grant.token,
                "expires_at": grant.expires_at,
                "ttl_ms": grant.ttl_ms,
            }
        )
    return str(grant.value)


def _lease(broker: BrokerClient, args: argparse.Namespace) -> bytes | str:
    lease = broker.lease(
        args.pool, args.worker_id, ttl_ms=args.ttl, size=args.size, wait_ms=args.wait
    )
    return _grant_output(lease, args)


def _renew(broker: BrokerClient, args: argparse.Namespace) -> bytes | str:
    return _grant_output(broker.renew_lease(args.pool, args.worker_id, args.ttl), args)


def _release(broker: BrokerClient, args: argparse.Namespace) -> bytes | str:
    if args.all:
        if args.pool is not None:
            raise UsageError(
                "release --all takes no POOL: it releases the worker's leases in every pool"
            )
        return str(broker.release_all(args.worker_id))
    if args.pool is None:
        raise UsageError("release needs a POOL, or --all")
    return _json(broker.release(args.pool, args.worker_id))


def _ping(broker: BrokerClient, args: argparse.Namespace) -> str:
    return f"pong {broker.ping():.3f} ms"


def _health(broker: BrokerClient, args: argparse.Namespace) -> bytes:
    return _json(broker.health(), indent=True)


def _stats(broker: BrokerClient, args: argparse.Namespace) -> bytes:
    return _json(broker.stats(), indent=True)


def _metrics(broker: BrokerClient, args: argparse.Namespace) -> str:
    text = broker.metrics()
    if args.broker_only:
        text = broker_series_only(text)
    return text.rstrip("\n")


BROKER_SERIES_PREFIX: Final = "ephemeral_broker_"


def broker_series_only(exposition: str) -> str:
    """Keep only the broker's own families (`ephemeral_broker_*`) of a text exposition.

    For node-exporter's textfile collector: it refuses a file whose `process_*` series
    duplicate its own, and drops the whole file. The text format is line-based: `# HELP NAME`
    and `# TYPE NAME` lines, then samples that start with the family's name.
    """
    kept = []
    for line in exposition.splitlines():
        if line.startswith("#"):
            words = line.split(maxsplit=3)
            name = words[2] if len(words) > 2 and words[1] in ("HELP", "TYPE") else ""
        else:
            name = line
        if name.startswith(BROKER_SERIES_PREFIX):
            kept.append(line)
    return "\n".join(kept) + "\n"


# ---- running one ---------------------------------------------------------------------------


def _fail(message: str, code: int) -> int:
    from ephemeral_broker.cli.common import PROG

    print(f"{PROG}: {message}", file=sys.stderr)
    return code


def _usage_line(args: argparse.Namespace, message: str) -> str:
    """A usage problem found before anything was sent, with the command it is about."""
    name = getattr(args, "key", None) or getattr(args, "pool", None)
    return (
        f"{args.command} {name!r}: {message}"
        if name is not None
        else (f"{args.command}: {message}")
    )


def _describe(
    error: BrokerError, args: argparse.Namespace, socket: str, broker: BrokerClient | None
) -> str:
    from ephemeral_broker.cli.common import PROG
    from ephemeral_broker.cli.messages import Failure, describe
    from ephemeral_broker_client import BrokerError, KeyNotFound

    def lookup(key: str) -> tuple[bool, Any, int] | None:
        if broker is None:
            return None
        try:
            item = broker.get_item(key)
        except KeyNotFound:
            return (False, None, 0)
        except BrokerError:
            return None
        return (True, item.value, item.version)

    failure = Failure(
        error.code,
        error.detail,
        error.request_id,
        args,
        PROG,
        socket,
        secret_set=bool(os.environ.get("EPHEMERAL_SECRET")),
    )
    return describe(failure, lookup)


def _write(output: bytes | str) -> None:
    data = output.encode("utf-8") if isinstance(output, str) else output
    try:
        sys.stdout.buffer.write(data + b"\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # `ephemeral-broker list | head -1`: the reader left; that is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def run_client_command(args: argparse.Namespace) -> int:
    from ephemeral_broker.cli.common import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
    from ephemeral_broker_client import BrokerClient, BrokerError, BrokerTimeout, BrokerUnavailable

    action: Action = args.action
    socket = args.socket or os.environ.get("EPHEMERAL_PIPE")
    if not socket:
        return _fail(
            _usage_line(args, "no broker socket: pass --socket PATH or set EPHEMERAL_PIPE"),
            EXIT_USAGE,
        )
    if hasattr(args, "worker"):
        # `--worker ''` is sent as given, for the broker to refuse: only no flag means the default.
        args.worker_id = args.worker if args.worker is not None else cli_worker_id()
    broker: BrokerClient | None = None
    try:
        with BrokerClient(socket, timeout=args.timeout) as broker:
            try:
                output = action(broker, args)
            except (BrokerUnavailable, BrokerTimeout):
                raise
            except BrokerError as exc:
                # Described while the connection is open: some sentences look the key up.
                message = _describe(exc, args, socket, broker)
                return _fail(message, EXIT_USAGE if exc.code in USAGE_CODES else EXIT_FAILED)
    except (BrokerUnavailable, BrokerTimeout) as exc:
        return _fail(_describe(exc, args, socket, None), EXIT_UNREACHABLE)
    except UnicodeEncodeError as exc:
        # A name typed as bytes that are not UTF-8 cannot be sent at all.
        from ephemeral_broker.cli.messages import name_problem

        return _fail(name_problem(args) or _usage_line(args, str(exc)), EXIT_USAGE)
    except (UsageError, TypeError, ValueError) as exc:
        # TypeError/ValueError: the client refused an argument before sending (a value that
        # is not JSON, a bad timeout).
        return _fail(_usage_line(args, str(exc)), EXIT_USAGE)
    if output is not None:
        _write(output)
    return EXIT_OK


# ---- the parser ----------------------------------------------------------------------------


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return seconds


INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


def _int64(text: str) -> int:
    """An integer flag: the broker's numbers are signed 64-bit, and one past that range could
    not even be sent (the client encodes only what the broker can read back)."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not INT64_MIN <= number <= INT64_MAX:
        raise argparse.ArgumentTypeError(
            f"{text} is outside the signed 64-bit integer range the broker keeps"
        )
    return number


def _version(text: str) -> int:
    """A key's version, as `get --json` and `set` print it: versions start at 1."""
    number = _int64(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a version: versions start at 1")
    return number


# The client commands' names, known without building their parsers (cli.py's dispatch).
CLIENT_COMMANDS: Final = frozenset(
    {
        "get",
        "set",
        "del",
        "list",
        "incr",
        "touch",
        "lease",
        "renew",
        "release",
        "ping",
        "health",
        "stats",
        "metrics",
    }
)


def add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the client commands on the top-level parser's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument(
        "--socket", metavar="PATH", help="the broker's socket [default: $EPHEMERAL_PIPE]"
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_seconds,
        default=5.0,
        help="give up after this long, connection retries included [default: 5]",
    )

    def command(name: str, action: Action, summary: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(
            name,
            parents=[common],
            help=summary,
            description=summary + " Reads EPHEMERAL_SECRET when the broker needs auth.",
        )
        parser.set_defaults(handler=run_client_command, action=action)
        return parser

    def json_flag(parser: argparse.ArgumentParser, what: str) -> None:
        parser.add_argument("--json", action="store_true", help=f"print {what} as JSON")

    get = command(
        "get",
        _get,
        'Print a key\'s value as JSON: a string in quotes ("5"), a number or object as it is.',
    )
    get.add_argument("key", metavar="KEY")
    get.add_argument(
        "--wait", metavar="MS", type=_int64, help="wait up to MS for the key to appear"
    )
    get.add_argument(
        "--raw",
        action="store_true",
        help="print a string value as it is, without quotes or escapes (other values print "
        "as JSON anyway)",
    )
    json_flag(get, "the whole answer (key, value, version, expires_at)")

    set_ = command(
        "set",
        _set,
        "Set a key; prints its new version. VALUE is stored as a string: `set num 5` stores "
        'the string "5", which incr refuses; with --json-value it is parsed as JSON and '
        "`set num 5 --json-value` stores the number 5.",
    )
    set_.add_argument("key", metavar="KEY")
    set_.add_argument("value", metavar="VALUE", help="a string, or JSON with --json-value")
    set_.add_argument("--ttl", metavar="MS", type=_int64, help="time to live in milliseconds")
    set_.add_argument(
        "--json-value",
        action="store_true",
        help="parse VALUE as JSON; VALUE - reads the JSON from stdin",
    )
    set_.add_argument("--if-absent", action="store_true", help="only create; fail if it exists")
    set_.add_argument(
        "--if-version",
        metavar="N",
        type=_version,
        help="only replace the key while it is at version N (compare-and-set: get --json "
        "shows the version); fail if it changed or is gone",
    )

    delete = command("del", _del, "Delete a key; prints true if it existed, else false.")
    delete.add_argument("key", metavar="KEY")

    list_ = command("list", _list, "Print the live keys, one a line, sorted.")
    list_.add_argument("--prefix", default="", metavar="P", help="only keys starting with P")
    list_.add_argument("--limit", type=_int64, default=1000, metavar="N", help="at most N keys")
    json_flag(list_, "key, version, expires_at and size of each key")

    incr = command("incr", _incr, "Add to an integer key (absent counts as 0); prints it.")
    incr.add_argument("key", metavar="KEY")
    incr.add_argument("--by", type=_int64, default=1, metavar="N", help="amount to add [1]")
    incr.add_argument("--ttl", metavar="MS", type=_int64, help="TTL if the key is created")

    touch = command(
        "touch",
        _touch,
        "Restart a key's TTL (value and version stay); prints its new expires_at (Unix epoch ms).",
    )
    touch.add_argument("key", metavar="KEY")
    touch.add_argument("--ttl", metavar="MS", type=_int64, required=True, help="the new TTL")

    worker_help = "worker id [default: $PYTEST_XDIST_WORKER, else <hostname>:<parent pid>]"
    lease = command("lease", _lease, "Lease the lowest free integer in a pool; prints it.")
    lease.add_argument("pool", metavar="POOL")
    lease.add_argument("--worker", metavar="ID", help=worker_help)
    lease.add_argument("--ttl", metavar="MS", type=_int64, help="lease TTL [broker's lease_ttl]")
    lease.add_argument("--size", metavar="N", type=_int64, help="values stay below N")
    lease.add_argument("--wait", metavar="MS", type=_int64, help="wait up to MS for a free value")
    json_flag(lease, "the whole lease (value, token, expires_at…)")

    renew = command(
        "renew",
        _renew,
        "Restart the TTL of the lease a worker holds in POOL (same value and token); prints "
        "its value. Fails if the lease expired or was released.",
    )
    renew.add_argument("pool", metavar="POOL")
    renew.add_argument("--worker", metavar="ID", help=worker_help)
    renew.add_argument("--ttl", metavar="MS", type=_int64, help="the new TTL [broker's lease_ttl]")
    json_flag(renew, "the whole lease (value, token, expires_at…)")

    release = command(
        "release",
        _release,
        "Release a worker's lease in POOL (prints true/false), or with --all in every pool "
        "(prints how many).",
    )
    release.add_argument("pool", metavar="POOL", nargs="?")
    release.add_argument("--worker", metavar="ID", help=worker_help)
    release.add_argument("--all", action="store_true", help="release in every pool")

    command("ping", _ping, "Check the broker answers; prints the round trip.")
    command("health", _health, "Print the broker's health report as JSON.")
    command("stats", _stats, "Print the broker's counters as JSON.")
    metrics = command("metrics", _metrics, "Print the broker's Prometheus metrics.")
    metrics.add_argument(
        "--broker-only",
        action="store_true",
        help="only the broker's own ephemeral_broker_* series, without process_* (for a "
        "node-exporter textfile collector, which refuses series it also reports)",
    )
