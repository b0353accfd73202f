"""python3 -m hapbx_node.cdr deadletters list|replay|drop: the operator's tool for the dead letters
(on a node: hapbx-cdr-deadletters, which reads the worker's env file).

The worker LPUSHes to the dead-letter list (Keys.dead) what it could not store, as JSON
``{"reason", "node", "at", "item"}`` (Worker.release): a record PostgreSQL refused for its data,
or a queue item that is no envelope.

  list [--json]                          one line per dead letter: index, when, node, call UUID,
                                         reason (never the record; --json: everything), a count
  replay (--all | INDEX...) [--dry-run] [--force]
                                         move each item back onto the queue's consuming end (the
                                         worker takes it next; stored once: ingest_outcome says
                                         stored, duplicate or conflict). An item that is no valid
                                         envelope would only die again: refused unless --force
  drop (--all | INDEX...) --yes [--dry-run]
                                         delete them for good

Index 0 is the oldest dead letter: the worker adds new ones at the other end, so an index stays
valid while it runs; a replay or drop shifts the indexes after it (list again). Each move is one
MULTI/EXEC watching the dead-letter list (the cdr user may not run scripts): the item is on exactly
one of the two lists whatever happens to this command. Replay and drop need the Redis master (the
VIP owner, where the worker runs); list works on a replica too.

Exit status: 0 done; 1 a dead letter refused or changed meanwhile, or Redis unavailable; 2 bad
usage (an unknown index, drop without --yes); 78 a bad setting (__main__).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass

import redis

from . import records
from .settings import Keys, RedisSettings

PROG = "hapbx-cdr-deadletters"
#: looks at a dead letter before its transaction gives up (the worker adding dead letters meanwhile)
WATCH_TRIES = 10
#: characters of a reason or call UUID shown on a line
SHOWN = 200


class UsageError(Exception):
    """Bad input: exit 2 with the message."""


class Failed(Exception):
    """Redis unavailable or refusing: exit 1 with the message."""


@dataclass(frozen=True)
class Letter:
    index: int          # from the oldest (0)
    raw: bytes          # as stored: what the transaction checks and removes
    at: str
    node: str
    reason: str
    item: str | None    # None: not a dead letter in the worker's format (nothing to replay)

    @property
    def call_uuid(self) -> str | None:
        try:
            return records.open_envelope(self.item)[0]["call_uuid"] if self.item is not None else None
        except records.Invalid:
            return None

    def unreplayable(self) -> str | None:
        """Why replaying the item would only make it a dead letter again (None: it is an envelope)."""
        if self.item is None:
            return "not a dead letter in the worker's format: nothing to replay"
        try:
            records.open_envelope(self.item)
        except records.Invalid as err:
            return str(err)
        return None

    def as_json(self) -> dict:
        out = {"index": self.index, "at": self.at, "node": self.node, "reason": self.reason,
               "call_uuid": self.call_uuid, "item": self.item}
        if self.item is None:
            out["letter"] = self.raw.decode("utf-8", errors="replace")
        return out


def parse(index: int, raw: bytes) -> Letter:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("item"), str):
        return Letter(index, raw, "", "", "unreadable dead letter (not the worker's JSON)", None)
    return Letter(index, raw, str(data.get("at", "")), str(data.get("node", "")), str(data.get("reason", "")),
                  data["item"])


def show(text: str | None, limit: int = SHOWN) -> str:
    """Text for a terminal line: escapes instead of control characters (a reason may quote the
    record's data), cut at limit."""
    if not text:
        return "-"
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def describe(letter: Letter) -> str:
    return f"{letter.index} ({show(letter.at)}, {show(letter.node)}, call {show(letter.call_uuid, 64)})"


# --- Redis ------------------------------------------------------------------------------------------

def connect(s: RedisSettings) -> redis.Redis:
    """The first endpoint, as the worker does (its env file names the local Redis)."""
    return redis.Redis(**s.redis_py(), socket_timeout=5, socket_connect_timeout=2, client_name=PROG)


def read_all(r: redis.Redis, keys: Keys) -> list[Letter]:
    raws = r.lrange(keys.dead, 0, -1)
    raws.reverse()   # the worker LPUSHes: the oldest is at the right end
    return [parse(i, raw) for i, raw in enumerate(raws)]


def take_out(r: redis.Redis, keys: Keys, letter: Letter, push: bytes | None = None) -> bool:
    """Remove the dead letter and RPUSH ``push`` onto the queue (the end the worker takes from) in
    one transaction, if the letter is still at its index; False when it is not (another replay
    or drop changed the list)."""
    position = -(letter.index + 1)   # from the right end: unchanged by the worker's LPUSHes
    with r.pipeline(transaction=True) as pipe:
        for _ in range(WATCH_TRIES):
            try:
                pipe.watch(keys.dead)
                if pipe.lindex(keys.dead, position) != letter.raw:
                    return False
                pipe.multi()
                # count 1 removes from the newest end: an identical copy there is the same letter,
                # and the lower indexes still to be handled keep their place
                pipe.lrem(keys.dead, 1, letter.raw)
                if push is not None:
                    pipe.rpush(keys.queue, push)
                pipe.execute()
                return True
            except redis.WatchError:
                continue   # the list changed between the look and EXEC (a new dead letter): look again
    raise Failed(f"{keys.dead} kept changing: dead letter {letter.index} left as it is; try again")


# --- the commands ------------------------------------------------------------------------------------

def chosen(letters: list[Letter], indexes: list[int], everything: bool) -> list[Letter]:
    """The selected letters, newest first: handling them in that order keeps the others' indexes."""
    if everything:
        picked = letters
    else:
        unknown = sorted({i for i in indexes if i >= len(letters)})
        if unknown:
            have = f"0..{len(letters) - 1}" if letters else "none"
            raise UsageError(f"no dead letter {', '.join(map(str, unknown))} (there are {len(letters)}: {have}; "
                             "list again)")
        picked = [letters[i] for i in sorted(set(indexes))]
    return sorted(picked, key=lambda x: x.index, reverse=True)


def cmd_list(r: redis.Redis, keys: Keys, args) -> int:
    letters = read_all(r, keys)
    if args.json:
        print(json.dumps({"key": keys.dead, "count": len(letters), "dead_letters": [x.as_json() for x in letters]}))
        return 0
    for x in letters:
        print(f"{x.index}\t{show(x.at)}\t{show(x.node)}\t{show(x.call_uuid, 64)}\t{show(x.reason)}")
    print(f"{len(letters)} dead letter(s) in {keys.dead}" + (" (index 0 is the oldest)" if letters else ""))
    return 0


def cmd_replay(r: redis.Redis, keys: Keys, args) -> int:
    moved = refused = 0
    for x in chosen(read_all(r, keys), args.indexes, args.all):
        why = x.unreplayable()
        if why and (x.item is None or not args.force):
            hint = "" if x.item is None else ": it would only die again (--force replays it anyway)"
            print(f"refused {describe(x)}: {show(why)}{hint}")
            refused += 1
        elif args.dry_run:
            print(f"would replay {describe(x)}")
        # surrogatepass: an item holding a lone surrogate goes back as it came (--force only; it dies again)
        elif take_out(r, keys, x, x.item.encode("utf-8", errors="surrogatepass")):
            print(f"replayed {describe(x)} onto {keys.queue}")
            moved += 1
        else:
            print(f"left {describe(x)}: changed since it was read (another replay or drop?); list again")
            refused += 1
    if not args.dry_run:
        print(f"{moved} replayed, {refused} not: the worker stores what was replayed (once per call UUID)")
    return 1 if refused else 0


def cmd_drop(r: redis.Redis, keys: Keys, args) -> int:
    picked = chosen(read_all(r, keys), args.indexes, args.all)
    if args.dry_run or not args.yes:
        for x in picked:
            print(f"would drop {describe(x)}")
        if not args.yes and not args.dry_run:
            raise UsageError(f"drop deletes {len(picked)} dead letter(s) for good: add --yes")
        return 0
    dropped = left = 0
    for x in picked:
        if take_out(r, keys, x):
            print(f"dropped {describe(x)}: {show(x.reason)}")
            dropped += 1
        else:
            print(f"left {describe(x)}: changed since it was read (another replay or drop?); list again")
            left += 1
    print(f"{dropped} dropped, {left} not")
    return 1 if left else 0


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{message} (see --help)")


def index(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not an index: {text!r}")
    return int(text)


def parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="List, replay or drop the CDR worker's dead letters (index 0: the oldest).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    ls = sub.add_parser("list", help="one line per dead letter (never the record) and a count")
    ls.add_argument("--json", action="store_true", help="everything, the records too, as one JSON document")
    for name, help_ in (("replay", "move the items back onto the queue; the worker stores them"),
                        ("drop", "delete them for good (needs --yes)")):
        c = sub.add_parser(name, help=help_)
        c.add_argument("indexes", nargs="*", type=index, metavar="INDEX")
        c.add_argument("--all", action="store_true", help="every dead letter")
        c.add_argument("--dry-run", action="store_true", help="say what would be done, change nothing")
        if name == "replay":
            c.add_argument("--force", action="store_true", help="replay items that are no valid envelope too")
        else:
            c.add_argument("--yes", action="store_true", help="really delete them")
    return p


COMMANDS = {"list": cmd_list, "replay": cmd_replay, "drop": cmd_drop}


def main(argv: list[str]) -> int:
    """SettingsError goes up to __main__ (exit 78, as the services)."""
    try:
        args = parser().parse_args(argv)
        if args.command != "list" and args.all == bool(args.indexes):
            raise UsageError("give the indexes of the dead letters or --all (list shows them)")
        settings = RedisSettings.from_env(os.environ)
        r = connect(settings)
        try:
            return COMMANDS[args.command](r, settings.keys, args)
        except redis.exceptions.ReadOnlyError:
            raise Failed("the Redis here is a replica: replay and drop run on the VIP owner (where the worker "
                         "runs)") from None
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as err:
            host, port = settings.endpoints[0]
            raise Failed(f"Redis at {host}:{port} unavailable: {err}") from None
        except redis.exceptions.ResponseError as err:
            # redis-py prefixes a transaction's error with the command, the dead letter included: not shown
            raise Failed(f"Redis refused: {show(str(err).rpartition('caused error: ')[2])}") from None
        finally:
            r.close()
    except UsageError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    except Failed as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `list | head`: the reader left; no traceback, and none at exit when Python flushes stdout
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
