"""Build ``docs/benchmarks.md`` from one run of every benchmark.

    .venv/bin/python benchmarks/build_docs.py [--skip-run] [--bootstrap 1000] [--out results]

Runs ``llmdispatch bench`` on every shared data set (routers, cascades,
compositions, bandits and the references), ``benchmarks/bench_cascades.py`` (compositions vs
routers vs cascades per benchmark, guarantee check), ``benchmarks/bench_online.py``
(online learners: regret, warm start, shift and drift),
``benchmarks/bench_encoders.py`` (kNN quality and speed per encoder: TF-IDF, LSA, MiniLM and
the static table distilled from MiniLM), ``benchmarks/bench_crossfit.py`` (routers judged on
every prompt of the small sets by cross-fitting) and
``benchmarks/bench_router_overhead.py`` (decision latency and throughput; alone, after the
others: ``--jobs 2``, the default, runs the first one beside the next four on this 2-core
machine). Then it
assembles their Markdown reports into ``docs/benchmarks.md`` and copies the plots to
``docs/img/``. ``--skip-run`` only assembles what ``OUT`` already holds.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMMAND = ".venv/bin/python benchmarks/build_docs.py"


def run(cmd: list[str]) -> float:
    """Run one benchmark; its wall time in seconds."""
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - start


def run_all(out: Path, bootstrap: int, jobs: int) -> dict[str, float]:
    """Run every benchmark; wall time per benchmark in seconds.

    With ``jobs=2`` the main ``llmdispatch bench`` runs in one lane and the per-benchmark
    studies in another (each is single-threaded); the router-overhead study, which measures
    latency, runs alone once both lanes are done.
    """
    py = str(BIN / "python")
    bench = [str(BIN / "llmdispatch"), "bench", "--out", str(out), "--bootstrap", str(bootstrap)]
    studies = {
        "cascades": [py, "benchmarks/bench_cascades.py", "--out", str(out)],
        "online": [py, "benchmarks/bench_online.py", "--out", str(out)],
        "crossfit": [
            py,
            "benchmarks/bench_crossfit.py",
            "--out",
            str(out),
            "--bootstrap",
            str(bootstrap),
        ],
        "encoders": [
            py,
            "benchmarks/bench_encoders.py",
            "--out",
            str(out),
            "--bootstrap",
            str(bootstrap),
        ],
    }
    times: dict[str, float] = {}

    def lane(items: dict[str, list[str]]) -> None:
        for name, cmd in items.items():
            times[name] = run(cmd)

    lanes = [{"bench": bench}, studies] if jobs == 2 else [{"bench": bench, **studies}]
    with ThreadPoolExecutor(max_workers=len(lanes)) as pool:
        for future in [pool.submit(lane, items) for items in lanes]:
            future.result()
    overhead = [py, "benchmarks/bench_router_overhead.py", "--out", str(out)]
    times["overhead"] = run(overhead)
    return times


def section(md: Path, img_src: Path, img_dst: Path, prefix: str, demote: int = 1) -> list[str]:
    """A report's lines with headings pushed down and images copied and relinked."""
    if not md.is_file():
        return [f"*(no report at `{md.name}`: that benchmark did not run)*", ""]
    lines = []
    for line in md.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            line = "#" * demote + line
        for name in re.findall(r"\]\(([^)]+\.png)\)", line):
            candidates = (img_src / name, img_src.parent / name, img_src / Path(name).name)
            src = next((c for c in candidates if c.is_file()), None)
            if src is not None:
                dst = img_dst / f"{prefix}{Path(name).name}"
                shutil.copyfile(src, dst)
                line = line.replace(f"]({name})", f"](img/{dst.name})")
        lines.append(line)
    return [*lines, ""]


def environment() -> dict[str, str]:
    """The commit and the versions of Python and of the libraries the numbers depend on
    (solvers and MiniLM's encodings move slightly between library versions)."""
    from importlib.metadata import PackageNotFoundError, version

    commit = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    env = {"commit": commit or "unknown", "python": platform.python_version()}
    for name in ("numpy", "scipy", "scikit-learn", "torch", "sentence-transformers"):
        try:
            env[name] = version(name)
        except PackageNotFoundError:
            continue
    env["BLAS"] = blas_kernels()
    return env


def blas_kernels() -> str:
    """The BLAS libraries numpy and scipy load, with the CPU kernel OpenBLAS picked for this
    machine: the iterative solvers' last digits follow it, so runs on hosts of other CPU
    generations differ slightly with the same code and versions."""
    import scipy.linalg  # noqa: F401  (loads scipy's own BLAS, if it has one)
    from threadpoolctl import threadpool_info

    found = {
        f"{d['internal_api']} {d['version']}"
        + (f" ({d['architecture']} kernel)" if d.get("architecture") else "")
        for d in threadpool_info()
        if d.get("user_api") == "blas"
    }
    return "; ".join(sorted(found)) or "unknown"


def main() -> None:
    """Run the benchmarks (unless ``--skip-run``) and write the document."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--skip-run", action="store_true")
    ap.add_argument(
        "--jobs",
        type=int,
        choices=(1, 2),
        default=2,
        help="2: llmdispatch bench beside the other studies (the timing study runs alone last)",
    )
    args = ap.parse_args()
    out = args.out.resolve()
    times_file, env_file = out / "wall-times.json", out / "environment.json"
    if not args.skip_run:
        times_file.parent.mkdir(parents=True, exist_ok=True)
        env_file.write_text(json.dumps(environment()))  # before the run, as it starts
        times_file.write_text(json.dumps(run_all(out, args.bootstrap, args.jobs)))
    times: dict[str, float] = json.loads(times_file.read_text()) if times_file.is_file() else {}
    env: dict[str, str] = json.loads(env_file.read_text()) if env_file.is_file() else {}
    docs = ROOT / "docs"
    img = docs / "img"
    img.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{COMMAND}` (runs every benchmark below, then writes this file; "
        "`--skip-run` rebuilds it from `results/`). Numbers are from one run on this project's "
        "2-core machine; every policy is fitted on a data set's train split and judged on its "
        "test split, never tuned on test. What the numbers say, how the methods were chosen "
        "and what was tried and dropped: [findings.md](findings.md).",
        "",
    ]
    if env:
        lines += [
            "Run at commit "
            + env.get("commit", "unknown")
            + " with "
            + ", ".join(f"{k} {v}" for k, v in env.items() if k != "commit")
            + ".",
            "",
        ]
    if times:
        lines += [
            "Wall time (bench in one lane beside the studies, overhead alone after): "
            + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()),
            "",
        ]
    lines += ["## Routers, cascades, compositions and bandits on every shared data set", ""]
    lines += section(out / "report.md", out, img, "bench-", demote=2)
    lines += section(out / "crossfit" / "crossfit.md", out / "crossfit", img, "crossfit-", 1)
    lines += ["## Cascades and compositions, per benchmark", ""]
    lines += section(out / "cascades" / "cascades.md", out / "cascades", img, "cascades-", 2)
    lines += ["## Online learning", ""]
    lines += section(out / "online" / "online.md", out / "online", img, "online-", 2)
    lines += ["## Router decision overhead", ""]
    lines += section(out / "overhead" / "overhead.md", out / "overhead", img, "overhead-", 2)
    lines += [
        "`knn (tfidf)` is the default kNN, which searches a 128-dimensional LSA projection of "
        "the TF-IDF rows; `knn-exact` searches the sparse rows themselves. Batch throughput is "
        "`Router.quality` over all queries (median of 3 rounds) on one thread and on one thread "
        "per core (`n_jobs`). Every router runs its default numpy path; "
        "`knn (tfidf, compiled kernels)` is the default kNN on the opt-in numba kernels of the "
        "`fast` extra (`llmdispatch.kernels.warm()`, the gateway's `compiled_kernels: true`; "
        "about 115 MiB more resident memory per process), timed in the same rounds.",
        "",
        "Gateway latency, throughput and memory beside LiteLLM: [performance.md](performance.md).",
        "",
    ]
    lines += ["## Encoders: MiniLM quality at hashing speed?", ""]
    lines += section(out / "encoders" / "encoders.md", out / "encoders", img, "encoders-", 2)
    (docs / "benchmarks.md").write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {docs / 'benchmarks.md'}")
    update_readme(out / "report.md", ROOT / "README.md")


def update_readme(report: Path, readme: Path) -> None:
    """Copy the bench report's summary table between the README's BENCH-SUMMARY markers."""
    if not report.is_file():
        return
    text = report.read_text(encoding="utf-8")
    start = text.find("## Summary")
    if start < 0:
        return
    end = text.find("\n## ", start + 1)
    summary = text[start : end if end > 0 else None].splitlines()[1:]
    body = "\n".join(line for line in summary).strip()
    doc = readme.read_text(encoding="utf-8")
    a, b = "<!-- BENCH-SUMMARY -->", "<!-- /BENCH-SUMMARY -->"
    if a in doc and b in doc:
        head, rest = doc.split(a, 1)
        _, tail = rest.split(b, 1)
        readme.write_text(f"{head}{a}\n{body}\n{b}{tail}", encoding="utf-8")
        print(f"updated the summary in {readme}")


if __name__ == "__main__":
    main()
