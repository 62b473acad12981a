"""The `apimart-async` command line."""

from __future__ import annotations

import argparse
import asyncio
import errno
import functools
import importlib.util
import json
import logging
import math
import os
import re
import signal
import sqlite3
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
import attrs
from anyio.abc import TaskStatus

from .._batch.fleet import WorkerOutcome
from .._batch.inputs import InputError
from .._batch.journal import ItemState
from .._batch.runner import BatchItem, BatchReport
from .._core.config import DEFAULT_BASE_URL, ENV_API_KEY, ENV_BASE_URL
from .._core.errors import (
    APIConnectionError,
    APIMartError,
    BadRequestError,
    DecodeError,
    DownloadError,
    JournalUnavailableError,
    JournalWriteError,
    NotFoundError,
    RateLimitError,
    ResultExpiredError,
    ServerError,
    ValidationError,
    WorkerFencedError,
    account_problem,
)
from .._core.groups import lone_exception, ungrouped
from .._core.hooks import DownloadEvent
from .._io.clock import Clock
from .._version import __version__
from .notice import ConnectNotice
from .text import shown

__all__ = ["main"]

log = logging.getLogger("apimart_async")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ACCOUNT, EXIT_SPEND_CAP = 0, 1, 2, 3, 4
# The overall --timeout passed, as timeout(1) reports it.
EXIT_TIMEOUT = 124
# An interrupted batch exits 128 + the signal's number, as shells do: 130 for SIGINT
# (Ctrl-C), 143 for SIGTERM.
T = TypeVar("T")

EXIT_STATUS_HELP = """\
exit status:
  0    done: every video is on disk (status: the task did not fail)
  1    some items failed, are ambiguous or are not on disk yet, or the command
       could not finish (unknown task, API unreachable or failing, disk error):
       see the message
  2    usage or input error (bad arguments, bad lines in the input file):
       nothing was sent
  3    account problem: API key rejected (401), balance exhausted (402) or
       permission denied (403); fix the account, re-run the same command to resume
  4    stopped at the --max-spend cap: items that could have crossed it were not
       sent (tasks already sent were finished); re-run with a larger cap to send them;
       or the cap was crossed (see --item-cost): the summary says by how much
  124  --timeout passed: nothing more was sent, requests on the wire landed; the
       summary says what was left; re-run the same command to resume
  130  interrupted (Ctrl-C, SIGINT); 143: terminated (SIGTERM); the summary
       says what was left; re-run the same command to resume
"""


def _range(text: str) -> tuple[float, float]:
    low, _, high = text.partition(":")
    try:
        a, b = float(low), float(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SECONDS or MIN:MAX, got {text!r}") from None
    if a <= 0 or b < a:
        raise argparse.ArgumentTypeError(f"expected 0 < MIN <= MAX, got {text!r}")
    return a, b


def _add_client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--base-url",
        default=None,
        help=f"API base URL (default: ${ENV_BASE_URL} or {DEFAULT_BASE_URL})",
    )
    p.add_argument(
        "--api-key", default=None, metavar="KEY",
        help="API key; '-' reads it from standard input. A key written here is visible to "
             "other users (ps): prefer $APIMART_API_KEY, --api-key-file or '-'",
    )
    p.add_argument("--api-key-file", default=None, metavar="PATH",
                   help="read the API key from the first line of PATH")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="apimart-async", description="APIMart video generation from the command line.",
        epilog=EXIT_STATUS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"apimart-async {__version__}")
    # Not required here: main() checks, after naming any unknown argument (argparse
    # would complain of the missing command first, and not name the stray flag).
    sub = parser.add_subparsers(dest="command")

    emu = sub.add_parser("emulator", help="run the APIMart emulator for offline testing")
    emu.add_argument("--host", default="127.0.0.1")
    emu.add_argument("--port", type=int, default=8089, help="API port (default 8089)")
    emu.add_argument("--file-port", type=int, default=0, help="file host port (default: any)")
    emu.add_argument("--api-key", default=None, help="accept only this key (default: any)")
    # The next three are read by the kind profile only (None: not given).
    emu.add_argument("--task-duration", type=_range, default=None, metavar="MIN:MAX",
                     help="task duration range in seconds (default 4:8; kind profile only)")
    emu.add_argument("--estimate-error", type=float, default=None,
                     help="estimated_time is off by up to this fraction (default 0.3; "
                          "kind profile only)")
    emu.add_argument("--fail-rate", type=float, default=None,
                     help="fraction of tasks that fail (default 0; kind profile only)")
    emu.add_argument("--latency", type=float, default=0.0, help="seconds added to each answer")
    emu.add_argument("--rate-limit", type=float, default=None, help="requests per second")
    emu.add_argument("--burst", type=int, default=None,
                     help="requests the rate limit lets through at once (default: the rate)")
    emu.add_argument("--balance", type=float, default=None,
                     help="what the key can spend (402 after; default: unlimited quota);"
                          " each submission costs 1 unless --price says otherwise")
    emu.add_argument("--price", action="append", default=[], type=_price,
                     metavar="[MODEL=]PER_TASK[+PER_SECOND]",
                     help="what a submission costs: per task plus per second of duration,"
                          " for MODEL or (without MODEL=) every other model; repeatable")
    emu.add_argument("--video-size", type=int, default=64 * 1024, help="bytes per video")
    emu.add_argument("--url-ttl", type=float, default=86400.0, help="result link lifetime (s)")
    emu.add_argument("--submit-faults", type=float, default=0.0,
                     help="probability of a 429/503 on each submission")
    emu.add_argument("--poll-faults", type=float, default=0.0,
                     help="probability of a 5xx, reset or HTML page on each poll")
    emu.add_argument("--download-faults", type=float, default=0.0,
                     help="probability of a cut download")
    emu.add_argument("--speed", type=float, default=1.0,
                     help="run task time this many times faster than real time")
    emu.add_argument("--seed", type=int, default=None,
                     help="seed of task ids, timings and random faults (default: a fresh one, "
                          "printed at start)")
    emu.add_argument("--profile", default="kind", type=_profile_name, metavar="PROFILE",
                     help="task timing: kind (default), realistic, hostile, or a benchmark"
                          " scenario such as s-curve or stall-99")
    emu.add_argument("--model-profile", action="append", default=[], type=_model_profile,
                     metavar="MODEL=PROFILE", help="a timing profile for one model (repeatable)")

    st = sub.add_parser("status", help="show a task's state")
    st.add_argument("task_id")
    st.add_argument("--json", action="store_true", help="print the task as JSON")
    _add_client_options(st)

    bt = sub.add_parser(
        "batch", help="generate and download every request of a .jsonl or .txt file",
        description="Re-running the same command resumes: the journal in DIR remembers "
        "every item, so nothing already submitted is submitted (or paid for) again.",
    )
    bt.add_argument("file", type=Path, help=".jsonl (one request object a line) or .txt")
    _add_batch_options(bt, batch=True)
    bt.add_argument("--journal", type=_journal, default=None, metavar="PATH|URL",
                    help="journal file (default: DIR/.apimart-journal.sqlite3), or a "
                         "postgresql:// URL: the batch is then shared by every process "
                         "running it (see 'worker')")
    _add_fleet_options(bt)
    bt.add_argument("--resubmit-ambiguous", action="store_true",
                    help="resubmit items a crash left mid-submission (they may be billed twice)")
    bt.add_argument("--retry-failed", action="store_true",
                    help="submit again the items whose task failed (or whose request was "
                         "refused) in an earlier run: each is a new task, billed again "
                         "(default: they stay failed)")
    bt.add_argument("--skip-duplicates", action="store_true",
                    help="send a request repeated in the file once (default: each line is a "
                         "video of its own, billed, and the repeats are listed before sending)")

    wk = sub.add_parser(
        "worker", help="join a batch kept in PostgreSQL as one more worker (no input file)",
        description="Works on batch NAME of the PostgreSQL journal until every item is done: "
        "claims pending items, adopts those of dead workers, downloads into DIR. --rps is "
        "the key's rate shared by the whole fleet.",
    )
    wk.add_argument("--journal", type=str, required=True, metavar="URL",
                    help="the postgresql:// URL of the fleet's journal")
    wk.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    wk.add_argument("--concurrency", type=_positive_int, default=16,
                    help="requests in flight from this worker (default 16)")
    wk.add_argument("--rps", type=_rate, default=None,
                    help="the key's rate, requests/second, shared by every worker")
    wk.add_argument("--resubmit-ambiguous", action="store_true",
                    help="resubmit items a dead worker left mid-submission (they may be "
                         "billed twice)")
    wk.add_argument("--json", action="store_true", help="print a machine-readable summary")
    wk.add_argument("--max-spend", type=_money, default=None, metavar="AMOUNT",
                    help="set the batch's spend cap (the balance's unit), shared by every "
                         "worker; a batch started with one keeps it without this flag")
    wk.add_argument("--item-cost", type=_money, default=None, metavar="AMOUNT",
                    help="with --max-spend: what one item costs, if known, counted by every "
                         "worker; the cap then holds from the first item")
    _add_fleet_options(wk)
    _add_client_options(wk)

    jn = sub.add_parser("journal", help="inspect a journal")
    jsub = jn.add_subparsers(dest="journal_command", metavar="ACTION", required=True)
    js = jsub.add_parser("status", help="items by state, workers and their heartbeats, "
                                        "ambiguous items")
    js.add_argument("--journal", type=_journal, required=True, metavar="PATH|URL")
    js.add_argument("--batch", default=None, metavar="NAME",
                    help="one batch (default: every batch in the journal)")
    js.add_argument("--json", action="store_true", help="print JSON for scripts")

    bal = sub.add_parser("balance", help="show the API key's balance (remain, used)")
    bal.add_argument("--json", action="store_true", help="print the balance as JSON")
    _add_client_options(bal)

    gen = sub.add_parser("generate", help="generate one video and download it (every output)")
    gen.add_argument("prompt")
    _add_batch_options(gen, batch=False)
    # One video: one request at a time is all it ever needs.
    gen.set_defaults(concurrency=1, rps=None, burst=None)

    dl = sub.add_parser("download", help="download a completed task's videos and images "
                                         "(DIR/TASK_ID.mp4, DIR/TASK_ID-2.mp4, ...)")
    dl.add_argument("task_id")
    dl.add_argument("--out", type=Path, required=True, metavar="DIR")
    dl.add_argument("--overwrite", action="store_true",
                    help="replace an existing DIR/TASK_ID.mp4 (or -N file) that holds "
                         "something else")
    _add_client_options(dl)

    demo = sub.add_parser("demo", help="run a batch against the built-in emulator (no key)")
    demo.add_argument("--out", type=Path, default=Path("apimart-demo"), metavar="DIR")
    demo.add_argument("--count", type=_positive_int, default=12,
                      help="videos to generate (default 12)")
    demo.add_argument("--speed", type=float, default=1.0,
                      help="run the emulator's task time this many times faster (default 1)")
    for command in sub.choices.values():
        # A stray flag after a command is reported with that command's usage.
        command.set_defaults(command_parser=command)
        # On every subcommand (``apimart-async batch --loop uvloop ...``).
        command.add_argument(
            "--loop", choices=LOOPS, default="auto",
            help="event loop: uvloop (the 'speed' extra), asyncio, or auto (default: "
                 "uvloop when installed)",
        )
    return parser


def _journal(text: str) -> Path | str:
    """A postgresql:// URL stays a URL; anything else is an SQLite journal's path."""
    from .._batch.pg import is_pg_url

    return text if is_pg_url(text) else Path(text)


def _add_fleet_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", default="default", metavar="NAME",
                   help="the batch's name in a postgresql:// journal (default: default)")
    p.add_argument("--lease", type=_seconds, default=30.0, metavar="SECONDS",
                   help="a worker silent this long is declared dead: what it was submitting "
                        "becomes ambiguous, the rest is adopted (default 30)")


LOOPS = ("auto", "asyncio", "uvloop")


def loop_options(choice: str) -> dict[str, Any] | None:
    """anyio's asyncio backend options for ``--loop CHOICE``; None when uvloop is asked
    for and not installed."""
    if choice == "asyncio":
        return {}
    if importlib.util.find_spec("uvloop") is None:
        return None if choice == "uvloop" else {}
    return {"use_uvloop": True}


def _add_batch_options(p: argparse.ArgumentParser, *, batch: bool) -> None:
    """The options of `batch` and `generate`; those about many requests for `batch` only."""
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    every = " for lines that do not set it" if batch else ""
    if batch:
        p.add_argument("--concurrency", type=_positive_int, default=16,
                       help="requests in flight at once (default 16)")
        p.add_argument("--rps", type=_rate, default=None,
                       help="the key's rate limit, if known: pace every request to it (no "
                            "429s); without it the limit is learned from the server's 429s")
        p.add_argument("--burst", type=_positive_int, default=None,
                       help="with --rps: requests the limit lets through at once (default 1)")
    p.add_argument("--model", default=None,
                   help=f"model{every} (default sora-2; checked: sora-2, sora-2-pro, veo3, "
                        "Omni-Flash-Ext; other names are sent as given)")
    p.add_argument("--duration", type=int, default=None, metavar="SECONDS",
                   help=f"video duration{every} (default: none sent, the model's own "
                        "default applies)")
    # Which ratios a model takes is the model registry's to say (veo3 takes 1:1).
    p.add_argument("--aspect-ratio", default=None,
                   help=f"aspect ratio{every}, e.g. 16:9 or 9:16, checked per model "
                        "(default: none sent, the model's own)")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                   help="overall deadline: then stop as on Ctrl-C (nothing more is sent, "
                        "what is paid for stays in the journal), exit 124; re-run to resume")
    p.add_argument("--max-spend", type=_money, default=None, metavar="AMOUNT",
                   help="spend at most AMOUNT on this batch, across all its runs on the "
                        "journal, capped or not (the balance's unit): items that could cross "
                        "it stay pending in the journal, exit 4; re-run with a larger cap to "
                        "send them")
    p.add_argument("--item-cost", type=_money, default=None, metavar="AMOUNT",
                   help="with --max-spend: what one item costs, if known; the cap then "
                        "holds from the first item (default: learned from the balance, "
                        "so a first item may cost more than the room left)")
    _add_client_options(p)


def _positive(what: str) -> Callable[[str], float]:
    """An argparse type: a finite number > 0, refused naming `what` it should be."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be {what} > 0, got {text!r}")
        return value
    return parse


_seconds = _positive("a number of seconds")
_money = _positive("an amount")
_rate = _positive("a number of requests per second")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _price(text: str) -> tuple[str | None, Any]:
    from ..testing import Price

    model, sep, amounts = text.rpartition("=")
    per_task, _, per_second = amounts.partition("+")
    try:
        price = Price(per_task=float(per_task), per_second=float(per_second or 0))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected [MODEL=]PER_TASK[+PER_SECOND] with amounts >= 0, got {text!r}") from None
    if sep and not model:
        raise argparse.ArgumentTypeError(f"expected a model name before '=', got {text!r}")
    return (model if sep else None), price


def _profile_names() -> list[str]:
    from ..testing import PROFILES

    return sorted(PROFILES)


def _profile_name(text: str) -> str:
    if text not in _profile_names():
        raise argparse.ArgumentTypeError(
            f"expected one of {', '.join(_profile_names())}, got {text!r}"
        )
    return text


def _model_profile(text: str) -> tuple[str, str]:
    model, sep, profile = text.partition("=")
    if not sep or not model or profile not in _profile_names():
        raise argparse.ArgumentTypeError(
            f"expected MODEL=PROFILE with PROFILE one of {', '.join(_profile_names())},"
            f" got {text!r}"
        )
    return model, profile


def _check_profile_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse the kind profile's flags beside another profile: they would do nothing."""
    on_kind = args.profile == "kind" or any(p == "kind" for _, p in args.model_profile)
    given = [flag for flag, value in (("--task-duration", args.task_duration),
                                      ("--estimate-error", args.estimate_error),
                                      ("--fail-rate", args.fail_rate)) if value is not None]
    if given and not on_kind:
        parser.error(f"{', '.join(given)} only affects the kind profile, but --profile "
                     f"{args.profile} times the tasks: drop one of them")


async def _run_emulator(args: argparse.Namespace) -> int:
    from ..testing import EmulatorConfig, EmulatorServer

    knobs = {name: value for name, value in (("duration", args.task_duration),
                                             ("estimate_error", args.estimate_error),
                                             ("fail_rate", args.fail_rate))
             if value is not None}
    # The last --price without a model is everyone else's; with MODEL=, that model's.
    fallback = [price for model, price in args.price if model is None]
    pricing: dict[str, Any] = {
        "prices": {model: price for model, price in args.price if model is not None},
        **({"price": fallback[-1]} if fallback else {}),
    }
    config = EmulatorConfig(
        api_key=args.api_key,
        **knobs,
        latency=args.latency,
        rate_limit=args.rate_limit,
        burst=args.burst,
        balance=args.balance,
        **pricing,
        video_size=args.video_size,
        url_ttl=args.url_ttl,
        submit_faults=args.submit_faults,
        poll_faults=args.poll_faults,
        download_faults=args.download_faults,
        seed=args.seed,
        profile=args.profile,
        profiles=dict(args.model_profile),
    )
    server = EmulatorServer(
        config, host=args.host, port=args.port, file_port=args.file_port,
        clock=Clock(speed=args.speed),
    )
    async with server:
        print(f"APIMart emulator on {server.base_url} (files on {server.file_base_url})")
        print(f"  export APIMART_BASE_URL={server.base_url}")
        print("  any API key is accepted" if args.api_key is None else "  one API key accepted")
        print(f"  seed {server.emulator.seed} (replay with --seed {server.emulator.seed})")
        sys.stdout.flush()
        await anyio.sleep_forever()
    return EXIT_OK


def task_json(task: Any) -> dict[str, Any]:
    """A `Task` as a JSON-ready dict."""
    return {
        "id": task.id,
        "status": task.raw_status or task.status.value,
        "progress": task.progress,
        "created": task.created,
        "estimated_time": task.estimated_time,
        "completed_at": task.completed_at,
        "actual_time": task.actual_time,
        "video_urls": list(task.video_urls),
        "image_urls": list(task.image_urls),
        "outputs": [{"kind": out.kind, "url": out.url, "expires_at": out.expires_at}
                    for out in task.outputs],
        "expires_at": task.expires_at,
        "error": None if task.error is None else {
            "code": task.error.code, "message": task.error.message
        },
    }


async def _run_status(args: argparse.Namespace) -> int:
    from .._session import Session

    notice = ConnectNotice()
    session = Session(args.api_key, base_url=args.base_url, hooks=notice.hooks)
    notice.base_url = session.base_url
    async with session:
        task = await _noticed(notice, functools.partial(session.get_task, args.task_id))
    if args.json:
        print(json.dumps(task_json(task), indent=2))
    else:
        print(f"{task.id}: {task.status.value} {task.progress}%")
        for out in task.outputs:
            print(f"  {out.kind}: {shown(out.url)}")
        if task.error:
            print(f"  error: {shown(str(task.error.code))}: {shown(task.error.message)}")
    return EXIT_FAILED if task.status.value in ("failed", "cancelled") else EXIT_OK


async def _noticed(notice: ConnectNotice, work: Callable[[], Awaitable[T]]) -> T:
    """`work()`, with `notice` watching for a host that does not answer."""
    with ungrouped():  # the command's error comes out as itself
        async with anyio.create_task_group() as tg:
            tg.start_soon(notice.watch)
            result = await work()
            tg.cancel_scope.cancel()
    return result
async def _run_balance(args: argparse.Namespace) -> int:
    from .._session import Session

    notice = ConnectNotice()
    session = Session(args.api_key, base_url=args.base_url, hooks=notice.hooks)
    notice.base_url = session.base_url
    async with session:
        balance = await _noticed(notice, session.balance)
    if args.json:
        print(json.dumps({"remain": balance.remain, "used": balance.used,
                          "unlimited": balance.unlimited}))
    elif balance.unlimited:
        print(f"unlimited quota; used {balance.used:g}")
    else:
        print(f"remain {balance.remain:g}; used {balance.used:g}")
    return EXIT_OK


def _json_code(error: APIMartError | None) -> int | str | None:
    """The typed error's ``code`` (the API's, or a failed task's), if it has one."""
    code = getattr(error, "code", None)
    return code if isinstance(code, (int, str)) else None


def report_json(report: BatchReport) -> dict[str, Any]:
    """A `BatchReport` as JSON-ready data."""
    return {
        "ok": report.ok and not (report.spend is not None and report.spend.over_cap),
        "items": len(report.items),
        "completed": report.completed,
        "failed": report.failed,
        "ambiguous": report.ambiguous,
        "pending": report.pending,
        "unfinished": report.unfinished,
        "bytes_downloaded": report.bytes_downloaded,
        "retries": report.retries,
        "rate_limited": report.rate_limited,
        "journal": str(report.journal),
        "account_error": None if report.account_error is None else {
            "type": type(report.account_error).__name__,
            "status": getattr(report.account_error, "status", None),
            "code": _json_code(report.account_error),
            "message": str(report.account_error),
        },
        "interrupted": report.interrupted,
        "spend": None if report.spend is None else {
            "cap": report.spend.cap, "spent": report.spend.spent,
            "spent_before": report.spend.spent_before, "total": report.spend.total,
            "left_pending": report.spend.left_pending,
            "over_cap": report.spend.over_cap,
            "exact": report.spend.end is not None,
        },
        "results": [
            {
                "index": r.index, "name": r.name, "state": r.state.value, "task_id": r.task_id,
                "path": str(r.path) if r.path else None, "size": r.size, "sha256": r.sha256,
                "files": [str(path) for path in r.files],
                "error": r.reason,
                "error_type": None if r.error is None else type(r.error).__name__,
                "status": getattr(r.error, "status", None),
                "code": _json_code(r.error),
                "request_id": None if r.error is None else r.error.request_id,
            }
            for r in report.items
        ],
        "earlier": [
            {"state": r.state.value, "task_id": r.task_id,
             "path": str(r.path) if r.path else None, "error": r.error}
            for r in report.earlier
        ],
    }


async def _batch(
    args: argparse.Namespace, items: list[BatchItem], *, base_url: str | None,
    api_key: str | None, journal: Path | str | None = None, resubmit_ambiguous: bool = False,
    clock: Clock | None = None, retry_failed: bool = False,
) -> int:
    from .._session import Session
    from .progress import BatchDisplay, summary_lines

    _check_out(args.out)
    timeout: float | None = getattr(args, "timeout", None)
    timed_out = anyio.Event()

    async def deadline(stop: anyio.Event, seconds: float) -> None:
        # Real seconds: the user's deadline, whatever clock the tasks run on.
        await anyio.sleep(seconds)
        if not stop.is_set():
            print(f"apimart-async: --timeout {seconds:g}s passed: sending nothing more; "
                  "letting requests on the wire land", file=sys.stderr, flush=True)
            timed_out.set()
            stop.set()

    async def go(stop: anyio.Event) -> BatchReport:
        notice = ConnectNotice()
        session = Session(
            api_key, base_url=base_url, max_concurrency=args.concurrency, rps=args.rps,
            burst=args.burst, clock=clock, hooks=notice.hooks,
        )
        notice.base_url = session.base_url
        async with session:
            with BatchDisplay(len(items), stream=sys.stderr) as display:
                async with anyio.create_task_group() as tg:
                    # From the first request: the journal (a database) opens before it.
                    tg.start_soon(notice.watch, lambda: session.stats.requests > 0)
                    if timeout is not None:
                        tg.start_soon(deadline, stop, timeout)
                    report = await session.run_batch(
                        items, out_dir=args.out, journal=journal,
                        resubmit_ambiguous=resubmit_ambiguous, on_change=display, stop=stop,
                        retry_failed=retry_failed,
                        max_spend=getattr(args, "max_spend", None),
                        item_cost=getattr(args, "item_cost", None),
                        batch=getattr(args, "batch", "default"),
                        lease=getattr(args, "lease", 30.0),
                    )
                    tg.cancel_scope.cancel()
                return report

    report, signum = await _interruptible(go)
    if report is None:
        print("apimart-async: interrupted twice: stopped at once; re-run the same command "
              "to resume (an item that was on the wire is then reported ambiguous)",
              file=sys.stderr)
        return 128 + (signum or signal.SIGINT)
    if args.json:
        print(json.dumps(report_json(report), indent=2))
    else:
        print("\n".join(summary_lines(report)))
    if timed_out.is_set() and signum is None and report.interrupted and not report.ok:
        return EXIT_TIMEOUT
    return report_exit_status(report, signum)


def report_exit_status(report: BatchReport, signum: int | None = None) -> int:
    """128 + the signal after an interrupt, 3 after an account failure, 4 when the
    spend cap left items unsent, 0 when every video is on disk, else 1."""
    if report.interrupted and signum is not None:
        return 128 + signum
    if report.account_error is not None:
        return EXIT_ACCOUNT
    if report.spend is not None and (report.spend.stopped_at_cap or report.spend.over_cap):
        return EXIT_SPEND_CAP
    # A paid task of an earlier run still not on disk is unfinished business too.
    stuck = any(item.task_id and not item.ok and item.state is not ItemState.FAILED
                for item in report.earlier)
    return EXIT_OK if report.ok and not stuck else EXIT_FAILED


async def _interruptible(
    run: Callable[[anyio.Event], Awaitable[T]],
) -> tuple[T | None, int | None]:
    """Run `run(stop)`; the first SIGINT or SIGTERM sets `stop` (finish what is on the
    wire, then return), a second one cancels at once (result None). Also returns the
    first signal's number, if any came."""
    stop = anyio.Event()
    received: list[int] = []
    at_once = anyio.CancelScope()

    async def listen(*, task_status: TaskStatus[None]) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                received.append(int(signum))
                if len(received) == 1:
                    print("apimart-async: interrupted: sending nothing more; letting requests "
                          "on the wire land (interrupt again to stop at once)",
                          file=sys.stderr, flush=True)
                    stop.set()
                else:
                    at_once.cancel()

    if threading.current_thread() is not threading.main_thread():
        # Signal handlers can only be installed on the main thread (main() called from
        # a worker thread, as a test harness may): run without them.
        return await run(stop), None
    result: list[T] = []
    failure: list[BaseException] = []
    async with anyio.create_task_group() as tg:
        await tg.start(listen)
        with at_once:
            try:
                result.append(await run(stop))
            except Exception as exc:  # raised below, outside this task group
                failure.append(lone_exception(exc) or exc)
        tg.cancel_scope.cancel()
    if failure:
        raise failure[0]
    return (result[0] if result else None), (received[0] if received else None)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValidationError("--out", f"{out} is a file, not a folder")


def _defaults(args: argparse.Namespace) -> dict[str, Any]:
    return {"model": args.model, "duration": args.duration, "aspect_ratio": args.aspect_ratio}


_FLAGS = {"model": "--model", "duration": "--duration", "aspect_ratio": "--aspect-ratio"}


def _check_defaults(args: argparse.Namespace, *, lines_may_set_model: bool = False) -> None:
    """Refuse a bad --model, --duration or --aspect-ratio once, naming the flag, rather
    than once per input line. A duration or ratio is checked against --model (else the
    default model); when no --model is given and lines may name their own model, the
    lines' own checks decide, as the flag may be right for their model."""
    from .._core.models import VideoRequest

    given = {k: v for k, v in _defaults(args).items() if v is not None}
    try:
        VideoRequest("probe", **given)
    except ValidationError as exc:
        if exc.field not in _FLAGS or (exc.field != "model" and args.model is None
                                       and lines_may_set_model):
            return
        raise ValidationError(_FLAGS[exc.field], exc.problem) from None


async def _run_batch(args: argparse.Namespace) -> int:
    from .._batch.inputs import read_batch

    _check_defaults(args, lines_may_set_model=args.file.suffix.lower() == ".jsonl")
    batch = read_batch(args.file, _defaults(args))
    for notice in batch.duplicate_notices(skipping=args.skip_duplicates):
        print(notice, file=sys.stderr)
    items, lines = batch.select(skip_duplicates=args.skip_duplicates)
    try:
        return await _batch(args, items, base_url=args.base_url, api_key=args.api_key,
                            journal=args.journal, resubmit_ambiguous=args.resubmit_ambiguous,
                            retry_failed=args.retry_failed)
    except ValidationError as exc:
        # An item refused by the journal: name its line, not its index in the list.
        match = re.fullmatch(r"requests\[(\d+)\]", exc.field)
        if match is None:
            raise
        raise InputError(args.file, lines[int(match.group(1))], exc.problem) from None


async def _run_generate(args: argparse.Namespace) -> int:
    from .._core.models import VideoRequest

    _check_defaults(args)
    fields = {k: v for k, v in _defaults(args).items() if v is not None}
    item = BatchItem(request=VideoRequest(args.prompt, **fields))
    return await _batch(args, [item], base_url=args.base_url, api_key=args.api_key)


async def _run_download(args: argparse.Namespace) -> int:
    from .._session import Session

    _check_out(args.out)
    await anyio.Path(args.out).mkdir(parents=True, exist_ok=True)
    notice = ConnectNotice()
    done: list[DownloadEvent] = []

    def on_download(event: DownloadEvent) -> None:
        if event.error is None:
            done.append(event)

    hooks = attrs.evolve(notice.hooks, on_download=on_download)
    session = Session(args.api_key, base_url=args.base_url, hooks=hooks)
    notice.base_url = session.base_url
    try:
        async with session:
            result = await _noticed(notice, functools.partial(
                session.download, args.task_id, args.out, overwrite=args.overwrite))
    except Exception:
        # The outputs before the one that failed are on disk: say so, not only the error.
        for event in done:
            print(f"{event.path} ({event.size:,} bytes)")
        if done:
            print(f"apimart-async: saved {len(done)} file(s) (listed above) before the "
                  "error below; run the command again to fetch the rest", file=sys.stderr)
        raise
    for saved in result.files:  # every output: TASK_ID.mp4, TASK_ID-2.mp4, ...
        print(f"{saved.path} ({saved.size:,} bytes, sha256 {saved.sha256})")
    return EXIT_OK


DEMO_PROMPTS = (
    "a paper boat drifting down a rain-soaked street",
    "a lighthouse at dusk, waves breaking on the rocks",
    "a red fox trotting through fresh snow",
    "timelapse of clouds over a mountain lake",
    "a hummingbird hovering at a purple flower, slow motion",
    "neon city street at night, light rain, reflections",
    "a steaming cup of coffee on a wooden table, morning light",
    "an astronaut floating above the earth, calm",
    "autumn leaves falling in a quiet park",
    "a sailboat on a calm sea at sunrise",
    "fireflies in a meadow at twilight",
    "a train crossing a stone bridge in the highlands",
)


async def _run_demo(args: argparse.Namespace) -> int:
    from .._core.models import VideoRequest
    from ..testing import EmulatorConfig, EmulatorServer, Fault

    config = EmulatorConfig(duration=(3.0, 6.0), fail_rate=0.0, latency=0.02, video_size=256 * 1024)
    clock = Clock(speed=args.speed)
    print(f"Starting the built-in APIMart emulator (no key, no network); "
          f"{args.count} videos into {args.out}/", file=sys.stderr)
    async with EmulatorServer(config, clock=clock) as server:
        # A little real-world weather: one rate-limit answer and two cut downloads.
        server.emulator.inject("submit", Fault.http(429, retry_after="1"))
        server.emulator.inject("download", Fault.cut(0.4), Fault.cut(0.7))
        prompts = [DEMO_PROMPTS[i % len(DEMO_PROMPTS)] for i in range(args.count)]
        items = [
            BatchItem(request=VideoRequest(p, duration=5), name=f"demo-{i + 1:02d}")
            for i, p in enumerate(prompts)
        ]
        args.concurrency, args.rps, args.burst, args.json = 8, None, None, False
        # The emulator lives only as long as this command: start a fresh journal.
        journal = args.out / ".apimart-demo-journal.sqlite3"
        for stale in (journal, *(journal.with_name(journal.name + s) for s in ("-wal", "-shm"))):
            await anyio.Path(stale).unlink(missing_ok=True)
        code = await _batch(args, items, base_url=server.base_url, api_key="demo-key",
                            clock=clock, journal=journal)
        stats = server.stats
        print(f"emulator saw {stats.submissions} submissions ({stats.duplicate_submissions} "
              f"duplicates), {sum(stats.polls.values())} polls, "
              f"{stats.range_requests} resumed downloads, "
              f"{stats.credential_leaks} credentials sent to the file host", file=sys.stderr)
    return code


async def _run_worker(args: argparse.Namespace) -> int:
    from .._session import Session

    _check_out(args.out)

    async def go(stop: anyio.Event) -> WorkerOutcome:
        async with Session(
            args.api_key, base_url=args.base_url, max_concurrency=args.concurrency,
            rps=args.rps,
        ) as session:
            return await session.run_worker(
                journal=args.journal, batch=args.batch, out_dir=args.out, lease=args.lease,
                resubmit_ambiguous=args.resubmit_ambiguous, stop=stop,
                max_spend=args.max_spend, item_cost=args.item_cost,
            )

    outcome, signum = await _interruptible(go)
    if outcome is None:
        print("apimart-async: interrupted twice: stopped at once; the fleet declares this "
              "worker dead after its lease (what it was sending becomes ambiguous)",
              file=sys.stderr)
        return 128 + (signum or signal.SIGINT)
    counts = outcome.counts
    total = sum(counts.values())
    if args.json:
        print(json.dumps(attrs.asdict(outcome, filter=lambda a, _: a.name != "account_error"),
                         indent=2, sort_keys=True))
    else:
        states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        print(f"worker {outcome.worker}: submitted {outcome.submitted}, downloaded "
              f"{outcome.downloaded} (adopted {outcome.adopted}) into {args.out}"
              + (f"; declared dead: {', '.join(map(str, outcome.declared_dead))}"
                 if outcome.declared_dead else ""))
        print(f"batch {args.batch}: {total} items: {states}")
        if outcome.stopped:
            print(f"the fleet is stopped: {outcome.stopped}")
        if outcome.stopped_at_cap:
            print("stopped at the batch's spend cap: the next item could cross it; run "
                  "with a larger --max-spend to send the rest")
    if outcome.interrupted and signum is not None:
        return 128 + signum
    if outcome.stopped:
        return EXIT_ACCOUNT
    if outcome.stopped_at_cap:
        return EXIT_SPEND_CAP  # as `batch` at its cap: items left pending, exit 4
    return EXIT_OK if counts.get(ItemState.DOWNLOADED.value, 0) == total else EXIT_FAILED


async def _run_journal(args: argparse.Namespace) -> int:
    from .._batch.pg import fleet_status, url_label

    if isinstance(args.journal, Path):
        status = await anyio.to_thread.run_sync(_sqlite_status, args.journal)
    else:
        try:
            status = await fleet_status(args.journal, args.batch)
        except ImportError as exc:
            raise ValidationError("--journal", f"cannot read it: {exc}") from None
        except OSError as exc:
            # Unreachable (refused, no such host): exit 1, as a silent or lost database.
            raise JournalUnavailableError(url_label(args.journal), str(exc)) from None
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True, default=str))
        return EXIT_OK
    print(f"journal {status['journal']} (schema version {status['schema_version']})")
    for batch in status["batches"]:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(batch["counts"].items()))
        print(f"batch {batch['batch']}: {batch['total']} items: {counts or 'none'}")
        if batch.get("stopped"):
            print(f"  stopped: {batch['stopped']}")
        if batch.get("spend"):
            spend = batch["spend"]
            print(f"  spend: {spend['spent']:g} spent, {spend['reserved']:g} reserved "
                  f"({spend['in_flight']} in flight) of a cap of {spend['cap']:g}")
        for w in batch.get("workers", []):
            life = "alive" if w["alive"] else f"dead ({w['dead_reason'] or 'lease passed'})"
            print(f"  worker {w['id']} {w['host']} pid {w['pid']}: {life}, heartbeat "
                  f"{w['heartbeat_age_s']:.1f}s ago (lease {w['lease_s']:g}s), "
                  f"{w['items']} items held")
        for a in batch["ambiguous"]:
            print(f"  ambiguous {a['name'] or a['key']}: {shown(a['reason'] or '')}")
    return EXIT_OK


def _sqlite_status(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValidationError("--journal", f"{path} does not exist")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        counts = dict(conn.execute("SELECT state, count(*) FROM items GROUP BY state"))
        version = conn.execute(
            "SELECT value FROM meta WHERE name = 'schema_version'").fetchone()[0]
        ambiguous = [{"key": k, "name": n, "reason": e} for k, n, e in conn.execute(
            "SELECT key, name, error FROM items WHERE state = 'ambiguous' ORDER BY position")]
    finally:
        conn.close()
    return {"journal": str(path), "schema_version": version, "batches": [{
        "batch": None, "counts": counts, "total": sum(counts.values()),
        "workers": [], "ambiguous": ambiguous, "stopped": None}]}


_COMMANDS = {
    "emulator": _run_emulator,
    "status": _run_status,
    "batch": _run_batch,
    "generate": _run_generate,
    "balance": _run_balance,
    "download": _run_download,
    "demo": _run_demo,
    "worker": _run_worker,
    "journal": _run_journal,
}


async def _run_command(args: argparse.Namespace) -> int:
    loop = type(asyncio.get_running_loop())
    log.debug("event loop: %s.%s", loop.__module__, loop.__qualname__)
    return await _COMMANDS[args.command](args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `apimart-async` and ``python -m apimart_async``."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        owner: argparse.ArgumentParser = getattr(args, "command_parser", None) or parser
        owner.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.error("the following arguments are required: command")
    if args.command == "emulator":
        _check_profile_flags(parser, args)
    options = loop_options(args.loop)
    if options is None:
        parser.error("--loop uvloop: uvloop is not installed "
                     "(pip install 'apimart-async[speed]', or use --loop asyncio)")
    # asyncpg's pool logs its reconnect attempts with a traceback when the journal's
    # database goes away; the CLI says that in one line (JournalUnavailableError).
    logging.getLogger("asyncpg").setLevel(logging.CRITICAL)
    try:
        _read_key(args)
        return anyio.run(_run_command, args, backend_options=options)
    except BrokenPipeError:
        # The reader of stdout went away (`... | head`): nothing to tell it, and no
        # second error when Python flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except (APIMartError, InputError, OSError, sqlite3.Error) as exc:
        status, message = explain(exc)
        # Bad input lines are ours, one a line (each escaped already): kept a line each.
        # Any other message may hold a server's text, whose line breaks are escaped too.
        safe = ("\n".join(shown(line) for line in message.split("\n"))
                if isinstance(exc, InputError) else shown(message))
        print(f"apimart-async: {safe}", file=sys.stderr)
        return status
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except Exception as exc:
        # The PostgreSQL journal's driver (an optional extra, not imported here): the
        # server went away, refused a login... One line, not a traceback.
        if not type(exc).__module__.startswith("asyncpg"):
            raise
        print(f"apimart-async: journal: {type(exc).__name__}: {exc} (check the "
              "postgresql:// URL and the server; a re-run resumes)", file=sys.stderr)
        return EXIT_FAILED


def _read_key(args: argparse.Namespace) -> None:
    """Put the key from ``--api-key-file`` or standard input (``--api-key -``) into
    ``args.api_key``; warn about a key written on the command line."""
    if args.command == "emulator" or not hasattr(args, "api_key_file"):
        return
    if args.api_key_file is not None:
        if args.api_key is not None:
            raise ValidationError("api_key", "give --api-key or --api-key-file, not both")
        try:
            # utf-8-sig: a BOM some editors write is not part of the key.
            with open(args.api_key_file, encoding="utf-8-sig") as handle:
                args.api_key = handle.readline().strip()
        except UnicodeDecodeError:
            raise ValidationError(
                "api_key", f"{args.api_key_file} is not UTF-8 text") from None
        except OSError as exc:
            # A usage error (exit 2), about the key file alone: nothing was sent.
            raise ValidationError("api_key", f"cannot read --api-key-file {args.api_key_file}: "
                                  f"{exc.strerror or exc}") from None
        if not args.api_key:
            raise ValidationError("api_key", f"{args.api_key_file} holds no key on its first line")
    elif args.api_key == "-":
        args.api_key = sys.stdin.readline().removeprefix("\ufeff").strip()
        if not args.api_key:
            raise ValidationError("api_key", "no key on standard input (--api-key -)")
    elif args.api_key is not None:
        print("apimart-async: warning: a key given with --api-key is visible to other users "
              f"(ps); use ${ENV_API_KEY}, --api-key-file PATH or --api-key -", file=sys.stderr)


# The library's hint for a mistyped model name (register_model(...)) is Python; on the
# command line the way is the exact name.
_REGISTER_HINT = re.compile(r"did you mean ('[^']*')\? \(to send this name as it is, register "
                            r"it: register_model\(ModelSpec\(.*?\)\)\)")


def _cli_hints(message: str) -> str:
    return _REGISTER_HINT.sub(r"did you mean \1? Model names are exact: use \1", message)


def explain(exc: Exception) -> tuple[int, str]:
    """The exit status for an error that stopped a command, and one line saying what to do."""
    status, message = _explain(exc)
    return status, _cli_hints(message)


def _explain(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, InputError):
        return EXIT_USAGE, f"error: {exc}"
    if isinstance(exc, ValidationError) and exc.field == "api_key" and "no API key" in str(exc):
        # The library's wording names api_key=; on the command line these are the ways.
        return EXIT_USAGE, (f"error: no API key: set the {ENV_API_KEY} environment variable, "
                            "or pass --api-key-file PATH (or --api-key - to read it from "
                            "standard input)")
    if isinstance(exc, ValidationError):
        return EXIT_USAGE, f"error: {exc}"
    if isinstance(exc, (WorkerFencedError, JournalUnavailableError)):
        return EXIT_FAILED, str(exc)
    if isinstance(exc, JournalWriteError):
        # Paid tasks may be known only to the recovery file (or the lines above).
        return EXIT_FAILED, (f"{exc}. Keep that file: a re-run with this journal cannot "
                             "see those tasks")
    if isinstance(exc, APIMartError):
        problem = account_problem(exc)
        if problem is not None:
            return EXIT_ACCOUNT, problem
    if isinstance(exc, BadRequestError):
        return EXIT_USAGE, f"the API rejected the request ({exc}): fix the parameters"
    if isinstance(exc, NotFoundError):
        return EXIT_FAILED, f"no such task ({exc}): check the task id"
    if isinstance(exc, APIConnectionError):  # and APITimeoutError
        return EXIT_FAILED, (f"cannot reach the API ({exc}): check --base-url (or "
                             f"${ENV_BASE_URL}) and the network, then try again")
    if isinstance(exc, (RateLimitError, ServerError)):
        return EXIT_FAILED, f"the API is busy or failing ({exc}): try again later"
    if isinstance(exc, DecodeError):
        return EXIT_FAILED, (f"unexpected answer ({exc}): is --base-url (or ${ENV_BASE_URL}) "
                             "the APIMart API?")
    if isinstance(exc, DownloadError) and not exc.resumable:
        return EXIT_FAILED, str(exc)
    if isinstance(exc, (DownloadError, ResultExpiredError)):
        return EXIT_FAILED, f"{exc}; run the command again to resume"
    if isinstance(exc, APIMartError):
        return EXIT_FAILED, f"{type(exc).__name__}: {exc}"
    if isinstance(exc, sqlite3.Error):
        return EXIT_FAILED, f"journal: {exc} (use another --journal, or move the file away)"
    assert isinstance(exc, OSError)
    where = f"{exc.filename}: " if exc.filename else ""
    # Named as what it is (ENOSPC, EROFS, EMFILE, ...): a local fault, not the network's.
    name = errno.errorcode.get(exc.errno) if exc.errno is not None else None
    code = f" ({name})" if name else ""
    return EXIT_FAILED, (f"{where}{exc.strerror or exc}{code}: check the path (e.g. --out), "
                         "its permissions, the free space and open-file limit (ulimit -n); "
                         "a batch re-run resumes what is paid for")
