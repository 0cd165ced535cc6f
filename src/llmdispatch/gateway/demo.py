"""The demo: train a router and a cascade, serve them, send real traffic, report the bill.

Everything runs on this machine over real HTTP: the replay provider answers with recorded
responses of the data set, the gateway serves the trained policies, and the official
``openai`` client sends the test prompts. Quality is read from the recorded scores of the
model that answered; cost is what the gateway billed (every rung of a cascade included).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmdispatch.artifacts import save_artifact
from llmdispatch.data import load_table, train_validation
from llmdispatch.data.table import OutcomeTable


@dataclass
class PolicyTally:
    """What one policy did with the test prompts."""

    name: str
    quality: list[float] = field(default_factory=list)
    cost: list[float] = field(default_factory=list)
    models: Counter[str] = field(default_factory=Counter)
    rungs: list[int] = field(default_factory=list)
    errors: int = 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _serve(app: Any) -> Iterator[str]:
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("a demo server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def train_policies(table: OutcomeTable, folder: Path) -> dict[str, Path]:
    """A calibrated kNN router and a FrugalGPT cascade, fitted on the train split."""
    from llmdispatch.policies.cascade_fit import FrugalGPTCascade
    from llmdispatch.policies.router import Router

    train = table.split("train")
    fit, validation = train_validation(train)
    router = Router(calibrate={"quality_fraction": 0.95}).fit(fit, validation)
    strongest = table.models[router.strongest_]
    budget = 0.5 * float(train.mean_cost()[table.models.index(strongest)])
    cascade = FrugalGPTCascade(budget=budget).fit(fit, validation)
    paths = {"router": folder / "router", "cascade": folder / "cascade"}
    save_artifact(paths["router"], router, {"trained_on": table.name})
    save_artifact(paths["cascade"], cascade, {"trained_on": table.name})
    return paths


async def send_all(
    url: str,
    table: OutcomeTable,
    policies: list[str],
    concurrency: int,
    progress: Any,
) -> dict[str, PolicyTally]:
    """Every test prompt through every policy, ``concurrency`` at a time."""
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="demo", max_retries=0)
    sem = asyncio.Semaphore(concurrency)
    tallies = {p: PolicyTally(p) for p in policies}
    task = progress.add_task("requests", total=len(policies) * table.n_prompts)

    async def one(policy: str, i: int) -> None:
        messages: list[dict[str, str]] = []
        system = table.systems[i]
        if isinstance(system, str) and system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": str(table.prompts[i])})
        tally = tallies[policy]
        async with sem:
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model=policy,
                    messages=messages,  # type: ignore[arg-type]
                    extra_headers={"x-llmdispatch-task": str(table.datasets[i])},
                )
            except openai.APIError:
                tally.errors += 1
                progress.advance(task)
                return
        reply = raw.parse()
        j = table.models.index(reply.model)
        tally.quality.append(float(table.score[i, j]))
        tally.cost.append(float(raw.headers["x-llmdispatch-cost"]))
        tally.rungs.append(int(raw.headers["x-llmdispatch-rungs"]))
        tally.models[reply.model] += 1
        progress.advance(task)

    await asyncio.gather(*(one(p, i) for p in policies for i in range(table.n_prompts)))
    await client.close()
    return tallies


def run_demo(data: str, limit: int, concurrency: int, console: Any) -> dict[str, Any]:
    """Train, serve, send, and return the summary (printed by the ``demo`` command)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from llmdispatch.gateway.app import create_app
    from llmdispatch.gateway.config import load_config
    from llmdispatch.gateway.replay_server import build_replay_app

    table = load_table(data)
    import numpy as np

    test = table.split("test")
    if limit and test.n_prompts > limit:
        # A seeded sample across the whole split (it is sorted by benchmark).
        pick = np.sort(np.random.default_rng(0).choice(test.n_prompts, limit, replace=False))
        test = test.take(pick)
    train_means = table.split("train").mean_score()
    strongest = table.models[int(np.nanargmax(train_means))]
    with tempfile.TemporaryDirectory(prefix="llmdispatch-demo-") as tmp:
        folder = Path(tmp)
        console.print(f"training a router and a cascade on {table.name} (train split)…")
        start = time.perf_counter()
        paths = train_policies(table, folder)
        console.print(f"trained in {time.perf_counter() - start:.1f} s")
        with _serve(build_replay_app(table)) as upstream:
            models = {
                m: {
                    "base_url": upstream + "/v1",
                    "price_in_per_mtok": table.card(m).price_in_per_mtok,
                    "price_out_per_mtok": table.card(m).price_out_per_mtok,
                }
                for m in table.models
            }
            cfg = {
                "models": models,
                "policies": {k: {"artifact": str(v)} for k, v in paths.items()},
                "default_policy": "router",
                "database": str(folder / "requests.sqlite"),
            }
            (folder / "gateway.yaml").write_text(yaml.safe_dump(cfg))
            app = create_app(load_config(folder / "gateway.yaml"))
            with _serve(app) as url:
                console.print(f"replay provider at {upstream}, gateway at {url}")
                policies = ["llmdispatch/router", "llmdispatch/cascade", strongest]
                with Progress(
                    *Progress.get_default_columns()[:1],
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    console=console,
                ) as progress:
                    start = time.perf_counter()
                    tallies = asyncio.run(send_all(url, test, policies, concurrency, progress))
                    seconds = time.perf_counter() - start
    base = tallies[strongest]
    base_cost = sum(base.cost) or float("nan")
    rows = []
    for p, t in tallies.items():
        n = len(t.quality)
        rows.append(
            {
                "policy": p,
                "requests": n,
                "errors": t.errors,
                "quality": sum(t.quality) / n if n else float("nan"),
                "cost": sum(t.cost),
                "cost_vs_strongest": sum(t.cost) / base_cost,
                "mean_rungs": sum(t.rungs) / n if n else float("nan"),
                "top_models": t.models.most_common(3),
            }
        )
    return {
        "data": table.name,
        "prompts": test.n_prompts,
        "strongest": strongest,
        "seconds": seconds,
        "rows": rows,
    }
