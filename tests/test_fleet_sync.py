"""The blocking facade runs a fleet too: `apimart_async.sync.Session.run_batch` with a
postgresql:// journal, and `run_worker` joining the same batch from another thread."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from apimart_async import VideoRequest

from .test_sync import Threaded, threaded  # noqa: F401 - the fixture


def test_sync_run_batch_and_run_worker_share_a_batch(
    threaded: Threaded, pg_url: str, tmp_path: Path  # noqa: F811
) -> None:
    requests = [VideoRequest(f"sync fleet {i}", duration=5) for i in range(6)]
    with threaded.session() as s:
        report = s.run_batch(requests, out_dir=tmp_path / "a", journal=pg_url, batch="s",
                             lease=2.0)
    assert report.ok and threaded.server.stats.submissions == 6
    more = [VideoRequest(f"sync fleet more {i}", duration=5) for i in range(6)]
    outcomes: list[Any] = []
    stop = threading.Event()

    def join() -> None:
        with threaded.session() as w:
            outcomes.append(w.run_worker(journal=pg_url, batch="s", out_dir=tmp_path / "b",
                                         lease=2.0, stop=stop))

    with threaded.session() as s:
        report = s.run_batch(more, out_dir=tmp_path / "a", journal=pg_url, batch="s",
                             lease=2.0)
        helper = threading.Thread(target=join)
        helper.start()
        helper.join(30)
    assert report.ok and not helper.is_alive()
    assert outcomes and outcomes[0].counts == {"downloaded": 12}
    assert threaded.server.stats.submissions == 12
    assert threaded.server.stats.duplicate_submissions == 0
