"""The `apimart-async` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from ._config import DEFAULT_BASE_URL, ENV_BASE_URL
from ._errors import APIMartError, ValidationError
from ._version import __version__

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


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
    p.add_argument("--api-key", default=None, help="API key (default: $APIMART_API_KEY)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="apimart-async", description="APIMart video generation from the command line."
    )
    parser.add_argument("--version", action="version", version=f"apimart-async {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    emu = sub.add_parser("emulator", help="run the APIMart emulator for offline testing")
    emu.add_argument("--host", default="127.0.0.1")
    emu.add_argument("--port", type=int, default=8089, help="API port (default 8089)")
    emu.add_argument("--file-port", type=int, default=0, help="file host port (default: any)")
    emu.add_argument("--api-key", default=None, help="accept only this key (default: any)")
    emu.add_argument("--task-duration", type=_range, default=(4.0, 8.0), metavar="MIN:MAX",
                     help="task duration range in seconds (default 4:8)")
    emu.add_argument("--estimate-error", type=float, default=0.3,
                     help="estimated_time is off by up to this fraction (default 0.3)")
    emu.add_argument("--fail-rate", type=float, default=0.0, help="fraction of tasks that fail")
    emu.add_argument("--latency", type=float, default=0.0, help="seconds added to each answer")
    emu.add_argument("--rate-limit", type=float, default=None, help="requests per second")
    emu.add_argument("--balance", type=int, default=None, help="submissions allowed (402 after)")
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
    emu.add_argument("--seed", type=int, default=0)

    st = sub.add_parser("status", help="show a task's state")
    st.add_argument("task_id")
    st.add_argument("--json", action="store_true", help="print the task as JSON")
    _add_client_options(st)
    return parser


async def _run_emulator(args: argparse.Namespace) -> int:
    from .testing import Clock, EmulatorConfig, EmulatorServer

    config = EmulatorConfig(
        api_key=args.api_key,
        duration=args.task_duration,
        estimate_error=args.estimate_error,
        fail_rate=args.fail_rate,
        latency=args.latency,
        rate_limit=args.rate_limit,
        balance=args.balance,
        video_size=args.video_size,
        url_ttl=args.url_ttl,
        submit_faults=args.submit_faults,
        poll_faults=args.poll_faults,
        download_faults=args.download_faults,
        seed=args.seed,
    )
    server = EmulatorServer(
        config, host=args.host, port=args.port, file_port=args.file_port,
        clock=Clock(speed=args.speed),
    )
    async with server:
        print(f"APIMart emulator on {server.base_url} (files on {server.file_base_url})")
        print(f"  export APIMART_BASE_URL={server.base_url}")
        print("  any API key is accepted" if args.api_key is None else "  one API key accepted")
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
        "expires_at": task.expires_at,
        "error": None if task.error is None else {
            "code": task.error.code, "message": task.error.message
        },
    }


async def _run_status(args: argparse.Namespace) -> int:
    from ._session import Session

    async with Session(args.api_key, base_url=args.base_url) as session:
        task = await session.get_task(args.task_id)
    if args.json:
        print(json.dumps(task_json(task), indent=2))
    else:
        print(f"{task.id}: {task.status.value} {task.progress}%")
        for url in task.video_urls:
            print(f"  video: {url}")
        if task.error:
            print(f"  error: {task.error.code}: {task.error.message}")
    return EXIT_FAILED if task.status.value in ("failed", "cancelled") else EXIT_OK


_COMMANDS = {"emulator": _run_emulator, "status": _run_status}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `apimart-async` and ``python -m apimart_async``."""
    args = build_parser().parse_args(argv)
    try:
        return anyio.run(_COMMANDS[args.command], args)
    except ValidationError as exc:
        print(f"apimart-async: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except APIMartError as exc:
        print(f"apimart-async: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
