"""``make demo``: the whole path, end to end, on this machine.

1. starts the local Fluxrate-compatible devserver (``fluxrate_web.devserver.DevServer``);
2. starts the example FastAPI service (``examples/fastapi_app``) under uvicorn, in its own
   process, configured by its ``fluxrate.yaml`` to bill that devserver;
3. sends a burst of API calls as three customers (chat, search, streaming), with a progress bar;
4. prints what the devserver billed, per customer and meter, beside what the demo expects and
   the app's delivery counters (read from its ``/admin/stats`` route);
5. stops both (the app flushes its queue on shutdown).

    .venv/bin/python examples/demo.py            # a few seconds
    .venv/bin/python examples/demo.py --keep     # keep the devserver (and its dashboard) open
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fluxrate_web.devserver import DevServer  # noqa: E402

METERS = {
    "api_calls": "11111111-1111-4111-8111-111111111111",
    "tokens": "22222222-2222-4222-8222-222222222222",
    "stream_bytes": "33333333-3333-4333-8333-333333333333",
}
CUSTOMERS = {"acme": "key-acme-123", "globex": "key-globex-456", "initech": "key-initech-789"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def progress(done: int, total: int, started: float, width: int = 40) -> None:
    filled = width * done // total
    rate = done / max(time.monotonic() - started, 1e-6)
    bar = "#" * filled + "." * (width - filled)
    sys.stdout.write(f"\r  [{bar}] {done:4d}/{total} requests  {rate:6.0f}/s")
    sys.stdout.flush()


def start_app(devserver: DevServer, port: int, admin_token: str) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        FLUXRATE_API_KEY=devserver.api_key,
        FLUXRATE_BASE_URL=devserver.url,
        FLUXRATE_ALLOW_INSECURE="true",
        FLUXRATE_METER_API_CALLS=METERS["api_calls"],
        FLUXRATE_METER_TOKENS=METERS["tokens"],
        FLUXRATE_METER_STREAM_BYTES=METERS["stream_bytes"],
        EXAMPLE_ADMIN_TOKEN=admin_token,
        PYTHONPATH=os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])),
    )
    command = [
        sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), "fastapi_app.main:app",
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    return subprocess.Popen(command, env=env)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client() as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"the example app exited with status {process.returncode}")
            try:
                if client.get(url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    raise SystemExit("the example app did not start in time")


async def burst(url: str, total: int, concurrency: int) -> dict[tuple[str, str], int]:
    """Send ``total`` requests as the three customers; return what should be billed."""
    rng = random.Random(42)
    expected: dict[tuple[str, str], int] = defaultdict(int)
    plan = [(rng.choice(list(CUSTOMERS)), rng.random()) for _ in range(total)]
    done = 0
    started = time.monotonic()
    queue: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done
        while not queue.empty():
            customer, draw = queue.get_nowait()
            headers = {"X-API-Key": CUSTOMERS[customer]}
            if draw < 0.5:
                prompt = " ".join(["word"] * (1 + int(draw * 20)))
                r = await client.post(
                    "/v1/chat", json={"prompt": prompt, "max_tokens": 8}, headers=headers
                )
                r.raise_for_status()
                expected[(customer, "api_calls")] += 1
                expected[(customer, "tokens")] += r.json()["tokens"]
            elif draw < 0.8:
                r = await client.get("/v1/search", params={"q": "demo"}, headers=headers)
                r.raise_for_status()
                expected[(customer, "api_calls")] += 1
            elif draw < 0.95:
                r = await client.get("/v1/stream", params={"words": 50}, headers=headers)
                r.raise_for_status()
                expected[(customer, "api_calls")] += 1
                expected[(customer, "stream_bytes")] += len(r.content)
            else:  # a bad key: answered 401, never billed
                r = await client.get("/v1/search", params={"q": "x"}, headers={"X-API-Key": "no"})
                assert r.status_code == 401
            done += 1
            if done % 10 == 0 or done == total:
                progress(done, total, started)

    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    print()
    return dict(expected)


def admin_stats(url: str, admin_token: str) -> dict[str, int]:
    with httpx.Client(base_url=url, timeout=5) as client:
        response = client.get("/admin/stats", headers={"X-Admin-Token": admin_token})
        response.raise_for_status()
        stats: dict[str, int] = response.json()
        return stats


def settle(url: str, admin_token: str, timeout: float = 10.0) -> dict[str, int]:
    """The app's client counters once nothing is pending any more."""
    deadline = time.monotonic() + timeout
    stats = admin_stats(url, admin_token)
    while stats["pending"] and time.monotonic() < deadline:
        time.sleep(0.1)
        stats = admin_stats(url, admin_token)
    return stats


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # uvicorn: lifespan shutdown, the client flushes
        try:
            return process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the devserver running")
    args = parser.parse_args(argv)

    started = time.monotonic()
    admin_token = secrets.token_urlsafe(16)
    meters = {name: f"SUM:{token}" for name, token in METERS.items()}
    print("fluxrate-web demo")
    with DevServer(meters=meters) as devserver:
        print(f"  devserver      {devserver.url}  (meters: {', '.join(METERS)})")
        port = free_port()
        app_url = f"http://127.0.0.1:{port}"
        app = start_app(devserver, port, admin_token)
        try:
            wait_ready(app_url, app)
            print(f"  example app    {app_url}  (examples/fastapi_app under uvicorn)")
            print(f"\nSending {args.requests} requests as {', '.join(CUSTOMERS)}:")
            expected = asyncio.run(burst(app_url, args.requests, args.concurrency))
            stats = settle(app_url, admin_token)
        finally:
            status = stop(app)
        ledger = devserver.summary()

        print("\nBilled by the devserver (ledger) vs expected by the demo:")
        print(f"  {'customer':10s} {'meter':14s} {'ledger':>10s} {'expected':>10s}")
        ok = True
        for customer in sorted(CUSTOMERS):
            for meter in METERS:
                want = expected.get((customer, meter), 0)
                got = ledger.get(customer, {}).get(meter, 0)
                ok &= got == want
                mark = "ok" if got == want else "MISMATCH"
                print(f"  {customer:10s} {meter:14s} {got:>10g} {want:>10d}  {mark}")
        print("\nThe app's delivery client (GET /admin/stats, after the burst):")
        print("  " + "  ".join(f"{name}={value}" for name, value in stats.items()))
        print(f"\nDashboard: {devserver.url}/")
        print(f"App exited with status {status}; demo took {time.monotonic() - started:.1f} s.")
        if args.keep:
            print("--keep: the devserver stays up; press Ctrl-C to stop it.")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    print("Stopped the devserver." if ok else "The ledger does not match: see above.")
    return 0 if ok and status == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
