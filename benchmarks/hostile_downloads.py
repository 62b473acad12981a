"""Peak RSS and bytes on disk of one download against the file host's hostile modes.

    python benchmarks/hostile_downloads.py [MODE ...] [--max-mb N]

Each mode runs in a fresh process (so its peak RSS is its own) against the emulator on
loopback: a task completes, the file host gets the fault, the download is attempted with
`DownloadPolicy(max_bytes=N MiB)`. One line per mode: outcome, peak RSS, bytes on disk.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = ("endless", "gzip_bomb", "gzip", "drip", "html", "cut_unframed", "none")


async def one(mode: str, max_mb: int) -> str:
    from apimart_async import DownloadPolicy, Session, VideoRequest
    from apimart_async.testing import Clock, EmulatorServer, Fault, set_testing

    set_testing(True)
    faults = {
        "endless": Fault.endless(), "gzip_bomb": Fault.gzip(bomb=True), "gzip": Fault.gzip(),
        "drip": Fault.drip(1.0), "html": Fault.html(200), "cut_unframed": Fault.cut_unframed(),
    }
    policy = DownloadPolicy(max_bytes=max_mb << 20, low_speed_time=10.0)
    with tempfile.TemporaryDirectory() as folder:
        async with EmulatorServer(clock=Clock(speed=50)) as server, Session(
            "bench-key", base_url=server.base_url, clock=server.emulator.clock,
            downloads=policy,
        ) as s:
            task = await s.wait(await s.submit(VideoRequest("a fox")))
            if mode in faults:
                server.emulator.inject("download", *[faults[mode]] * 5)
            try:
                result = await s.download(task, Path(folder) / "v.mp4")
                outcome = f"ok ({result.size:,} bytes)"
            except Exception as exc:
                outcome = f"{type(exc).__name__}: {str(exc)[:70]}"
            on_disk = _disk(Path(folder))
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return f"{mode:<13} peak RSS {rss_mb:6.1f} MB  on disk {on_disk:>12,} B  {outcome}"


def _disk(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("modes", nargs="*", default=list(MODES))
    parser.add_argument("--max-mb", type=int, default=256)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(asyncio.run(one(args.modes[0], args.max_mb)))
        return
    for mode in args.modes:
        subprocess.run([sys.executable, __file__, "--child", "--max-mb", str(args.max_mb), mode],
                       check=False)


if __name__ == "__main__":
    main()
