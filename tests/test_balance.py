"""Balance and spend caps (#10 item 1): parsing, session.balance(), the emulator's
charges, and run_batch(max_spend=...) holding its cap, alone and concurrently."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import sys
from pathlib import Path

import aiohttp
import anyio
import pytest

from apimart_async import (
    APIStatusError,
    AuthenticationError,
    Balance,
    DecodeError,
    InsufficientBalanceError,
    ItemResult,
    ItemState,
    RateLimitError,
    ServerError,
    ValidationError,
    VideoRequest,
)
from apimart_async._core.balance import BALANCE_PATH, build_get_balance, parse_balance
from apimart_async._core.spend import SpendBudget, Verdict
from apimart_async.testing import EmulatorConfig, Fault, Price, emulator_process

from .conftest import KEY, MakeServer, cli, session_for
from .test_cli_polish import _first_stderr_line

pytestmark = pytest.mark.anyio


def _body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


# -- the pure part: request and answer --------------------------------------------------


def test_request_is_a_plain_get_of_v1_balance() -> None:
    request = build_get_balance()
    assert (request.method, request.path, request.json) == ("GET", BALANCE_PATH, None)
    assert BALANCE_PATH == "/v1/balance" and request.idempotent


def test_balance_answer_parses() -> None:
    balance = parse_balance(200, _body(success=True, remain_balance=10.5, used_balance=2.3,
                                       unlimited_quota=False))
    assert balance == Balance(remain=10.5, used=2.3, unlimited=False)
    assert balance.covers(10.5) and not balance.covers(10.6)


def test_unlimited_quota_has_no_remain() -> None:
    balance = parse_balance(200, _body(success=True, remain_balance=-1, used_balance=7,
                                       unlimited_quota=True))
    assert balance == Balance(remain=None, used=7.0, unlimited=True)
    assert balance.covers(1e12)
    # Without the flag, -1 is an overdrawn account, not an unlimited one.
    assert not parse_balance(200, _body(success=True, remain_balance=-1,
                                        used_balance=7)).covers(0.01)


@pytest.mark.parametrize("body", [
    b"not json", b"[]", b"null",
    _body(remain_balance=1, used_balance=0),  # no success
    _body(success="yes", remain_balance=1, used_balance=0),
    _body(success=True, used_balance=0),
    _body(success=True, remain_balance="10", used_balance=0),
    _body(success=True, remain_balance=True, used_balance=0),
    _body(success=True, remain_balance=1),
    _body(success=True, remain_balance=1, used_balance=-2),
    _body(success=True, remain_balance=1, used_balance=0, unlimited_quota="no"),
    b'{"success": true, "remain_balance": NaN, "used_balance": 0}',
    b'{"success": true, "remain_balance": 1, "used_balance": Infinity}',
])
def test_bad_shapes_are_decode_errors(body: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_balance(200, body)


def test_success_false_is_an_error_with_the_message_scrubbed() -> None:
    with pytest.raises(APIStatusError) as caught:
        parse_balance(200, _body(success=False, message=f"key {KEY} does not exist"),
                      secret=KEY)
    assert "does not exist" in str(caught.value) and KEY not in str(caught.value)
    assert type(caught.value) is APIStatusError


@pytest.mark.parametrize(("status", "body", "error"), [
    (401, _body(error={"code": 401, "message": "bad key"}), AuthenticationError),
    (429, _body(error={"code": 429, "message": "slow down"}), RateLimitError),
    (502, b"<html>bad gateway</html>", ServerError),
    (200, _body(code=402, msg="no money"), InsufficientBalanceError),
])
def test_error_answers_raise_the_usual_errors(
    status: int, body: bytes, error: type[Exception]
) -> None:
    with pytest.raises(error):
        parse_balance(status, body)


# -- the pure part: the budget ----------------------------------------------------------


def test_budget_probes_an_unknown_price_alone_then_packs_to_the_cap() -> None:
    budget = SpendBudget(5, start_used=100)
    assert budget.reserve("a", 0) is Verdict.GRANTED  # the probe: all the room
    assert budget.reserve("a", 1) is Verdict.WAIT
    budget.settle(0, charged=True)
    assert budget.needs_reading and budget.reserve("a", 1) is Verdict.WAIT
    budget.observe(101)  # the probe cost 1
    assert budget.estimate("a") == 1 and budget.spent == 1
    granted = [t for t in range(1, 10) if budget.reserve("a", t) is Verdict.GRANTED]
    assert granted == [1, 2, 3, 4]  # 1 spent + 4 reserved = the cap
    assert budget.reserve("a", 9) is Verdict.WAIT  # the others may cost less
    for t in granted:
        budget.settle(t, charged=True)
    budget.observe(105)
    assert budget.spent == 5 and budget.reserve("a", 9) is Verdict.REFUSED
    assert budget.refused == 1


def test_budget_releases_what_was_not_charged_and_reads_only_up_to_the_mark() -> None:
    budget = SpendBudget(3, start_used=0, estimates={"a": 1.0})
    for t in range(3):
        assert budget.reserve("a", t) is Verdict.GRANTED
    assert budget.reserve("a", 3) is Verdict.WAIT
    budget.release(0)  # refused by the server: nothing billed
    assert budget.reserve("a", 3) is Verdict.GRANTED
    budget.settle(1, charged=True)
    mark = budget.read_mark()
    budget.settle(2, charged=True)  # settled while the read was on the wire
    budget.observe(1.0, mark)
    assert budget.spent == 1 and budget.committed == 3  # 1 seen + 1 unseen + 1 in flight


def test_a_read_overtaken_by_another_readers_cuts_only_what_was_settled_before_its_mark(
) -> None:
    # Two workers share one budget (the fleet keeps it in a row). A marks, then B marks,
    # reads and observes first (shortening the window); then an item settles; then A's
    # read, sent before that item was billed, comes back. A must not take that item out
    # of the window: its cost is in no read yet. (An index into the window did: the
    # fleet then granted an eighth item under a cap of 7.)
    budget = SpendBudget(7, start_used=0, estimates={"a": 1.0})
    for t in range(3):
        assert budget.reserve("a", t) is Verdict.GRANTED
    budget.settle(0, charged=True)
    budget.settle(1, charged=True)
    mark_a = budget.read_mark()  # A: two settled so far
    mark_b = budget.read_mark()
    budget.observe(2.0, mark_b)  # B's read (both billed) lands first
    budget.settle(2, charged=True)  # billed after A's read went out
    budget.observe(2.0, mark_a)  # A's read: 2 used
    assert budget.spent == 2 and budget.committed == 3  # item 2 still counted, unseen
    granted = [t for t in range(3, 10) if budget.reserve("a", t) is Verdict.GRANTED]
    assert granted == [3, 4, 5, 6]  # 3 + 4 = the cap, not 5 more
    state = json.loads(json.dumps(budget.to_state()))
    assert SpendBudget.from_state(state).read_mark() == budget.read_mark()


def test_a_new_price_class_waits_for_quiet_and_holds_the_others_back() -> None:
    budget = SpendBudget(10, start_used=0, estimates={"a": 1.0})
    assert budget.reserve("a", 0) is Verdict.GRANTED
    assert budget.reserve("b", 1) is Verdict.WAIT  # "a" is out: b's read would be mixed
    assert budget.reserve("a", 2) is Verdict.WAIT  # b waits for its turn: no one cuts in
    budget.settle(0, charged=True)
    assert budget.reserve("b", 1) is Verdict.WAIT  # a's charge is not read yet
    budget.observe(1.0)
    assert budget.reserve("b", 1) is Verdict.GRANTED and budget.committed == 10
    budget.settle(1, charged=True)
    budget.observe(4.0)
    assert budget.estimate("b") == 3.0 and budget.reserve("a", 2) is Verdict.GRANTED


def test_budget_state_round_trips_through_json_mid_reservation() -> None:
    budget = SpendBudget(4, start_used=2, spent_before=1, estimates={"a": 1.0})
    assert budget.reserve("a", "k1") is Verdict.GRANTED
    budget.settle("k1", charged=True)
    assert budget.reserve("b", "k2") is Verdict.WAIT  # b's probe claim is kept too
    again = SpendBudget.from_state(json.loads(json.dumps(budget.to_state())))
    assert again.to_state() == budget.to_state()
    assert again.reserve("a", "k3") is Verdict.WAIT and again.needs_reading
    again.observe(3.0)
    assert again.spent == 2 and again.reserve("b", "k2") is Verdict.GRANTED
    assert again.committed == 4  # the probe holds all the room left


def test_budget_learns_up_from_a_mixed_window_and_refuses_bad_caps() -> None:
    budget = SpendBudget(100, start_used=0, estimates={"a": 1.0, "b": 1.0})
    for t, cls in enumerate("ab"):
        assert budget.reserve(cls, t) is Verdict.GRANTED
        budget.settle(t, charged=True)
    budget.observe(4.0)  # 4 for two items estimated at 1 each: both scaled x2
    assert budget.estimate("a") == budget.estimate("b") == 2.0
    for bad in (0, -1, float("inf"), float("nan"), True):
        with pytest.raises(ValueError, match="cap must be"):
            SpendBudget(bad, start_used=0)  # type: ignore[arg-type]


# -- over sockets: the emulator and session.balance() -----------------------------------


async def test_session_balance_and_the_emulator_charging_per_model(
    make_server: MakeServer,
) -> None:
    config = EmulatorConfig(balance=10.0, price=Price(per_task=1.0),
                            prices={"veo3": Price(per_task=0.5, per_second=0.25)})
    server = await make_server(config)
    emu = server.emulator
    async with session_for(server) as s:
        assert await s.balance() == Balance(remain=10.0, used=0.0, unlimited=False)
        await s.submit(VideoRequest("a", duration=5))  # 1
        await s.submit(VideoRequest("b", model="veo3", duration=8))  # 0.5 + 2
        balance = await s.balance()
        assert balance == Balance(remain=6.5, used=3.5, unlimited=False)
        emu.set_balance(0.5)
        with pytest.raises(InsufficientBalanceError):
            await s.submit(VideoRequest("c"))
        assert (await s.balance()).used == 3.5  # a refused submission costs nothing
        assert s.stats.balance_calls == 3
    assert emu.used_balance == 3.5
    paths = [r.path for r in emu.request_log if r.route == "balance"]
    assert paths == [BALANCE_PATH] * 3


async def test_unlimited_quota_counts_spending_and_balance_alias(
    make_server: MakeServer,
) -> None:
    server = await make_server(EmulatorConfig())  # balance None: unlimited
    async with session_for(server) as s:
        await s.submit(VideoRequest("a"))
        assert await s.balance() == Balance(remain=None, used=1.0, unlimited=True)
    async with aiohttp.ClientSession() as http, http.get(
        server.base_url + "/balance", headers={"Authorization": f"Bearer {KEY}"}
    ) as resp:
        assert await resp.json() == {"success": True, "remain_balance": -1,
                                     "used_balance": 1.0, "unlimited_quota": True}
    assert [r.route for r in server.emulator.request_log][-2:] == ["balance", "balance"]


async def test_balance_is_retried_like_a_get_and_401_is_not(make_server: MakeServer) -> None:
    server = await make_server(EmulatorConfig(api_key=KEY))
    server.emulator.inject("balance", Fault.http(503), Fault.reset(), Fault.http(429))
    async with session_for(server) as s:
        assert (await s.balance()).unlimited
        assert s.stats.retries >= 2 and server.emulator.pending_faults("balance") == 0
    async with session_for(server, api_key="sk-wrong-key-123456") as s:
        with pytest.raises(AuthenticationError):
            await s.balance()


def test_emulator_config_refuses_bad_prices_and_balances() -> None:
    for bad in ({"balance": float("nan")}, {"balance": "10"}, {"price": 1.0},
                {"prices": {"veo3": 2.0}}, {"prices": {"": Price()}}):
        with pytest.raises(ValueError, match=r"balance|price"):
            EmulatorConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="per_task"):
        Price(per_task=-1)


# -- over sockets: run_batch with a cap -------------------------------------------------


def _states(journal: Path) -> list[str]:
    with sqlite3.connect(journal) as conn:
        return [row[0] for row in conn.execute("SELECT state FROM items ORDER BY rowid")]


@pytest.mark.parametrize("concurrency", [1, 8])
async def test_the_cap_holds_and_a_rerun_with_a_larger_cap_finishes_without_rebilling(
    make_server: MakeServer, tmp_path: Path, concurrency: int,
) -> None:
    server = await make_server(EmulatorConfig(price=Price(per_task=0.5, per_second=0.1)))
    emu = server.emulator
    requests = [VideoRequest(f"scene {i}", duration=5) for i in range(12)]  # 1 each
    async with session_for(server, max_concurrency=concurrency) as s:
        report = await s.run_batch(requests, out_dir=tmp_path, max_spend=5)
    assert emu.used_balance <= 5 + 1e-9
    assert emu.used_balance == 5  # and nothing left on the table
    assert report.spend is not None and report.spend.spent == 5
    assert report.spend.left_pending == 7 and report.spend.stopped_at_cap
    assert report.completed == 5 and report.pending == 7
    assert _states(report.journal).count("pending") == 7
    assert all("spend cap" in (i.reason or "") for i in report.items if not i.ok)
    async with session_for(server, max_concurrency=concurrency) as s:
        same = await s.run_batch(requests, out_dir=tmp_path, max_spend=5)
    # The cap is the batch's, across runs: the same cap sends nothing more.
    assert same.spend is not None and same.spend.spent == 0 and same.spend.total == 5
    assert same.spend.left_pending == 7 and server.stats.submissions == 5
    async with session_for(server, max_concurrency=concurrency) as s:
        again = await s.run_batch(requests, out_dir=tmp_path, max_spend=50)
    assert again.ok and again.spend is not None and again.spend.spent == 7
    assert again.spend.total == 12 and not again.spend.stopped_at_cap
    assert server.stats.submissions == 12 and emu.used_balance == 12


async def test_the_balance_is_read_a_bounded_number_of_times_not_per_item(
    make_server: MakeServer, tmp_path: Path,
) -> None:
    server = await make_server(EmulatorConfig())
    requests = [VideoRequest(f"scene {i}", duration=5) for i in range(40)]
    async with session_for(server, max_concurrency=8) as s:
        report = await s.run_batch(requests, out_dir=tmp_path, max_spend=1000)
    assert report.ok and report.spend is not None and report.spend.spent == 40
    reads = [r for r in server.emulator.request_log if r.route == "balance"]
    # Before the first POST, once after the probe (its price), once at the end.
    assert len(reads) == 3


async def test_mixed_prices_under_concurrency_never_pass_the_cap(
    make_server: MakeServer, tmp_path: Path,
) -> None:
    prices = {"veo3": Price(per_task=2.0), "sora-2-pro": Price(per_task=0.75)}
    server = await make_server(EmulatorConfig(prices=prices, price=Price(per_task=0.3)))
    models = ["sora-2", "veo3", "sora-2-pro"]
    requests = [VideoRequest(f"scene {i}", model=models[i % 3]) for i in range(30)]
    async with session_for(server, max_concurrency=16) as s:
        report = await s.run_batch(requests, out_dir=tmp_path, max_spend=10)
    assert server.emulator.used_balance <= 10 + 1e-9
    assert report.spend is not None and report.spend.left_pending > 0
    assert report.spend.spent == pytest.approx(server.emulator.used_balance)
    assert report.completed + report.pending == 30


async def test_no_room_at_all_refuses_to_start_and_bad_caps_are_refused(
    make_server: MakeServer, tmp_path: Path,
) -> None:
    server = await make_server(EmulatorConfig(balance=0))
    async with session_for(server) as s:
        with pytest.raises(InsufficientBalanceError, match="nothing was sent"):
            await s.run_batch([VideoRequest("a")], out_dir=tmp_path, max_spend=5)
        for bad in (0, -3, float("nan"), float("inf"), "5", True):
            with pytest.raises(ValidationError, match="max_spend"):
                await s.run_batch([VideoRequest("a")], out_dir=tmp_path / "x",
                                  max_spend=bad)  # type: ignore[arg-type]
    assert server.stats.requests["submit"] == 0


async def test_a_402_mid_batch_under_a_cap_behaves_as_without_one(
    make_server: MakeServer, tmp_path: Path,
) -> None:
    server = await make_server(EmulatorConfig(balance=3))
    async with session_for(server, max_concurrency=1) as s:
        report = await s.run_batch([VideoRequest(f"s {i}") for i in range(6)],
                                   out_dir=tmp_path, max_spend=100)
    assert isinstance(report.account_error, InsufficientBalanceError)
    assert report.completed == 3 and report.pending == 3
    assert report.spend is not None and report.spend.spent == 3
    assert report.spend.left_pending == 0  # the account stopped it, not the cap


async def test_a_failed_last_read_reports_an_estimate_and_keeps_the_outcome(
    make_server: MakeServer, tmp_path: Path,
) -> None:
    server = await make_server(EmulatorConfig())
    emu = server.emulator

    def on_change(item: ItemResult) -> None:
        if item.state is ItemState.SUBMITTED and not emu.pending_faults("balance"):
            emu.inject("balance", Fault.http(401))  # the read at the end fails

    async with session_for(server) as s:
        report = await s.run_batch([VideoRequest("a")], out_dir=tmp_path, max_spend=3,
                                   on_change=on_change)
    assert report.ok and report.spend is not None and report.spend.end is None
    # Unread, the probe counts at all the room it reserved: never less than the truth.
    assert report.spend.spent == 3 >= emu.used_balance


async def test_cli_batch_max_spend_stops_with_exit_4_and_resumes(
    make_server: MakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    cli_env: None,
) -> None:
    server = await make_server(EmulatorConfig(price=Price(per_task=1.0)))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"scene {i}\n" for i in range(8)))
    out = tmp_path / "out"
    args = ("batch", str(prompts), "--out", str(out), "--base-url", server.base_url)
    status, stdout, _ = await cli(capsys, *args, "--max-spend", "5")
    assert status == 4
    assert "spent 5 of the 5 cap; 3 items left pending because of the cap" in stdout
    assert server.emulator.used_balance == 5
    status, stdout, _ = await cli(capsys, *args, "--max-spend", "5", "--json")
    assert status == 4  # the cap is the batch's: the first run spent it all
    spend = json.loads(stdout)["spend"]
    assert spend == {"cap": 5, "spent": 0, "spent_before": 5, "total": 5,
                     "left_pending": 3, "over_cap": False, "exact": True}
    status, stdout, _ = await cli(capsys, *args, "--max-spend", "20")
    assert status == 0 and "spent 3 (8 in all runs of this batch) of the 20 cap" in stdout
    assert server.stats.submissions == 8 and server.emulator.used_balance == 8
    from apimart_async._cli.main import main

    for bad in ("0", "-1", "nan", "inf", "five"):
        with pytest.raises(SystemExit) as caught:
            main([*args, "--max-spend", bad])
        assert caught.value.code == 2 and "--max-spend" in capsys.readouterr().err
    assert server.stats.submissions == 8


async def test_cli_generate_takes_max_spend_too(
    make_server: MakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    cli_env: None,
) -> None:
    server = await make_server(EmulatorConfig(price=Price(per_task=2.0)))
    status, stdout, _ = await cli(capsys, "generate", "a fox", "--out", str(tmp_path),
                                  "--base-url", server.base_url, "--max-spend", "5", "--json")
    assert status == 0
    assert json.loads(stdout)["spend"]["spent"] == 2 == server.emulator.used_balance


async def test_cli_balance_command(
    make_server: MakeServer, capsys: pytest.CaptureFixture[str], cli_env: None,
) -> None:
    server = await make_server(EmulatorConfig(balance=12.5))
    status, stdout, _ = await cli(capsys, "balance", "--base-url", server.base_url)
    assert status == 0 and "remain 12.5" in stdout and "used 0" in stdout
    status, stdout, _ = await cli(capsys, "balance", "--base-url", server.base_url, "--json")
    assert status == 0
    assert json.loads(stdout) == {"remain": 12.5, "used": 0.0, "unlimited": False}
    server.emulator.set_balance(None)
    status, stdout, _ = await cli(capsys, "balance", "--base-url", server.base_url)
    assert status == 0 and "unlimited" in stdout


async def test_the_readme_snippet_runs_as_a_script(tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Balance and spend caps", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert "asyncio.run(main())" in code
    script = tmp_path / "snippet.py"
    script.write_text(code)
    async with emulator_process("--speed", "100", "--price", "0.5+0.1") as url:
        env = {**os.environ, "APIMART_API_KEY": KEY, "APIMART_BASE_URL": url}
        result = await anyio.run_process([sys.executable, str(script)], cwd=tmp_path,
                                         env=env, check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines() == [
        "unlimited 0.0", "spent 5.0 (all runs: 5.0) of 5.0; 3 left pending because of the cap",
    ]


# -- liveness: a capped batch never hangs (#10 review) -----------------------------------


@pytest.mark.parametrize("groups", [2, 3])
async def test_a_capped_mix_of_price_groups_ends_at_the_cap(
    make_server: MakeServer, tmp_path: Path, groups: int,
) -> None:
    prices = {"veo3": Price(per_task=0.5, per_second=0.25),
              "sora-2-pro": Price(per_task=0.75)}
    server = await make_server(EmulatorConfig(prices=prices))
    requests = [VideoRequest(f"a {i}") for i in range(3)]
    requests += [VideoRequest(f"b {i}", model="veo3", duration=8) for i in range(3)]
    if groups == 3:
        requests += [VideoRequest(f"c {i}", model="sora-2-pro") for i in range(3)]
    async with session_for(server, max_concurrency=4) as s:
        with anyio.fail_after(10):  # it hung forever once the cap was reached
            report = await s.run_batch(requests, out_dir=tmp_path, max_spend=2)
    assert server.emulator.used_balance <= 2 + 1e-9
    assert report.spend is not None and report.spend.left_pending == report.pending > 0
    assert all(i.reason for i in report.items if not i.ok)


@pytest.mark.parametrize("seed", range(40))
def test_budget_never_leaves_a_waiter_with_nothing_to_wake_it(seed: int) -> None:
    """Random runs of reserve/settle/release/observe, driven as the runner drives them:
    a waiter asks again only once `version` moved since its WAIT. At every step, a
    waiter must have something that can move it: a reservation outstanding, a read to
    make, or another waiter that is due to ask. And it all ends: nobody waits forever."""
    import random

    rng = random.Random(seed)
    costs = {"a": 1.0, "b": 0.5 + rng.choice([0.0, 2.0]), "c": 3.0}
    known = {c: v for c, v in costs.items() if rng.random() < 0.3}
    budget = SpendBudget(rng.choice([1.5, 2, 5, 9]), start_used=0, estimates=known)
    used = 0.0
    unbilled: list[float] = []  # true costs of charged items the balance will show
    waiting: dict[int, tuple[str, int]] = {}  # token -> (class, version at its WAIT)
    granted: list[int] = []
    tokens = list(range(rng.randint(3, 12)))
    classes = {t: rng.choice("abc") for t in tokens}

    def ask(t: int) -> None:
        verdict = budget.reserve(classes[t], t)
        if verdict is Verdict.WAIT:
            waiting[t] = (classes[t], budget.version)
            return
        waiting.pop(t, None)
        if verdict is Verdict.GRANTED:
            granted.append(t)

    for _ in range(400):
        due = [t for t, (_, v) in waiting.items() if v != budget.version]
        if waiting and not due:
            # Stuck unless a reservation will settle or a read will be made.
            assert granted or budget.needs_reading, (seed, budget.to_state(), waiting)
        moves = []
        if tokens:
            moves.append("new")
        if due:
            moves.append("again")
        if granted:
            moves.append("settle")
        if budget.needs_reading:
            moves.append("read")
        if not moves:
            break
        move = rng.choice(moves)
        if move == "new":
            ask(tokens.pop(0))
        elif move == "again":
            ask(rng.choice(due))
        elif move == "settle":
            t = granted.pop(rng.randrange(len(granted)))
            charged = rng.random() < 0.8
            if charged:
                unbilled.append(costs[classes[t]])
            if charged or rng.random() < 0.5:
                budget.settle(t, charged=charged)
            else:
                budget.release(t)
        else:
            used += sum(unbilled)
            unbilled.clear()
            budget.observe(used)
    assert not waiting and not granted and not tokens, (seed, budget.to_state())


async def test_items_left_unsent_by_an_interrupt_say_why(
    make_server: MakeServer, tmp_path: Path,
) -> None:
    server = await make_server(EmulatorConfig())
    stop = anyio.Event()

    def on_change(item: ItemResult) -> None:
        if item.state is ItemState.SUBMITTED:
            stop.set()

    async with session_for(server, max_concurrency=1) as s:
        report = await s.run_batch([VideoRequest(f"s {i}") for i in range(6)],
                                   out_dir=tmp_path, max_spend=100, stop=stop,
                                   on_change=on_change)
    assert report.interrupted and report.pending > 0
    assert all("interrupted" in (i.reason or "") for i in report.items
               if i.state is ItemState.PENDING)


# -- the cap is the batch's across runs, capped or not (#10 review) ---------------------


def _forget_the_ledger(journal: Path) -> None:
    """Make the journal look like one written before the spend ledger existed."""
    with sqlite3.connect(journal) as conn:
        conn.execute("DELETE FROM meta WHERE name LIKE 'spen%'")


async def test_an_uncapped_run_counts_against_a_later_cap(
    make_server: MakeServer, tmp_path: Path,
) -> None:
    server = await make_server(EmulatorConfig())
    first = [VideoRequest(f"s {i}") for i in range(4)]
    async with session_for(server) as s:
        report = await s.run_batch(first, out_dir=tmp_path)  # no cap: spends 4
        assert report.ok and report.spend is None
        more = [*first, *(VideoRequest(f"t {i}") for i in range(3))]
        capped = await s.run_batch(more, out_dir=tmp_path, max_spend=3)
    assert server.emulator.used_balance == 4  # was 7: the cap forgot the first run
    assert capped.spend is not None and capped.spend.spent_before == 4
    assert capped.spend.spent == 0 and capped.spend.left_pending == 3
    assert capped.spend.over_cap  # the batch did spend more than this cap: said plainly
    from apimart_async._cli.progress import summary_lines

    assert "OVER THE CAP by 1: earlier runs of this batch" in summary_lines(capped)[0]


async def test_an_unfinished_account_is_closed_by_the_next_run(
    make_server: MakeServer, tmp_path: Path,
) -> None:
    server = await make_server(EmulatorConfig())
    emu = server.emulator

    def on_change(item: ItemResult) -> None:
        if item.state is ItemState.SUBMITTED and not emu.pending_faults("balance"):
            emu.inject("balance", Fault.http(401))  # the read at the end fails

    requests = [VideoRequest(f"s {i}") for i in range(2)]
    async with session_for(server, max_concurrency=1) as s:
        await s.run_batch(requests, out_dir=tmp_path, on_change=on_change)
        assert emu.used_balance == 2
        again = await s.run_batch([*requests, VideoRequest("t")], out_dir=tmp_path,
                                  max_spend=2)
    assert again.spend is not None and again.spend.spent_before == 2
    assert emu.used_balance == 2 and again.pending == 1


@pytest.mark.parametrize("unmeasured", ["older journal", "balance unreadable"])
async def test_unmeasured_paid_items_count_at_their_estimate(
    make_server: MakeServer, tmp_path: Path, unmeasured: str,
) -> None:
    server = await make_server(EmulatorConfig())
    first = [VideoRequest(f"s {i}") for i in range(4)]
    async with session_for(server) as s:
        if unmeasured == "balance unreadable":
            server.emulator.inject("balance", Fault.http(401))
        report = await s.run_batch(first, out_dir=tmp_path)
        assert report.ok  # an uncapped run is not stopped by a balance it cannot read
        if unmeasured == "older journal":
            _forget_the_ledger(tmp_path / ".apimart-journal.sqlite3")
        more = [*first, *(VideoRequest(f"t {i}") for i in range(3))]
        capped = await s.run_batch(more, out_dir=tmp_path, max_spend=3)
    # Their price is unknown until one item of their kind is read: one probe goes out,
    # then the 4 older items count at its price and nothing more is sent.
    assert server.emulator.used_balance == 5
    assert capped.spend is not None and capped.spend.total == 5
    assert capped.spend.left_pending == 2


# -- a crossed cap is never reported as success (#10 review) ----------------------------


async def test_a_crossed_cap_is_flagged_and_exits_4(
    make_server: MakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    cli_env: None,
) -> None:
    server = await make_server(EmulatorConfig(price=Price(per_task=1.0)))
    args = ("generate", "a fox", "--base-url", server.base_url, "--max-spend", "0.5")
    status, stdout, _ = await cli(capsys, *args, "--out", str(tmp_path / "a"), "--json")
    summary = json.loads(stdout)
    assert server.emulator.used_balance == 1  # the lone first item costs what it costs
    assert status == 4 and summary["ok"] is False and summary["spend"]["over_cap"] is True
    status, stdout, _ = await cli(capsys, *args, "--out", str(tmp_path / "b"))
    assert status == 4 and "OVER THE CAP by 0.5" in stdout


async def test_item_cost_holds_the_cap_from_the_first_item(
    make_server: MakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    cli_env: None,
) -> None:
    server = await make_server(EmulatorConfig(price=Price(per_task=1.0)))
    status, stdout, _ = await cli(
        capsys, "generate", "a fox", "--base-url", server.base_url, "--max-spend", "0.5",
        "--item-cost", "1", "--out", str(tmp_path), "--json")
    assert status == 4 and server.emulator.used_balance == 0
    assert json.loads(stdout)["spend"]["left_pending"] == 1
    requests = [VideoRequest(f"s {i}", model=m) for i in range(4) for m in ("sora-2", "veo3")]
    async with session_for(server, max_concurrency=8) as s:
        report = await s.run_batch(requests, out_dir=tmp_path / "b", max_spend=5,
                                   item_cost=1)
        with pytest.raises(ValidationError, match="item_cost"):
            await s.run_batch(requests, out_dir=tmp_path / "c", item_cost=1)
    assert report.spend is not None and not report.spend.over_cap
    assert server.emulator.used_balance == 5 and report.spend.left_pending == 3
    # No lone first item per group (a read after each): 2 reads for `generate`, then
    # start, one once the cap is full (could the rest cost less?), end; on a loaded
    # machine the compressed clock can pass one more read interval while items wait.
    reads = [r for r in server.emulator.request_log if r.route == "balance"]
    assert 2 + 3 <= len(reads) <= 2 + 4, len(reads)


@pytest.mark.parametrize("host", ["refused", "silent"])
async def test_cli_balance_tells_at_once_when_the_host_does_not_answer(host: str) -> None:
    with socket.socket() as sock:  # takes connections (kernel backlog), never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        silent = f"http://127.0.0.1:{sock.getsockname()[1]}"
        url = "http://127.0.0.1:1" if host == "refused" else silent
        line, running = await _first_stderr_line("balance", "--base-url", url)
    told = "cannot connect to 127.0.0.1:1 yet" if host == "refused" else "no answer from"
    assert line.startswith(f"apimart-async: {told}"), line
    assert running is None  # told while still retrying or waiting
