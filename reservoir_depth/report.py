"""A study's report: the rank table, r*(eps), file sizes, figures, provenance.

``write_report(study, out)`` reads ``out``/runs.sqlite and writes report.md,
table.csv, runs.csv, rank.png and study.json (resolved configs, seeds, versions).
"""

from __future__ import annotations

import json
import math
import platform
import tempfile
from pathlib import Path
from typing import Any, Mapping

from . import __version__
from .rank import SaturationRank
from .results import ResultsStore, markdown, plot_rank, rank_table
from .sweep import Run, build_model, dataset_of, runs_of, study_frame

EPS = (0.005, 0.01, 0.02)


def adapter_bytes(run: Run) -> tuple[int, int]:
    """(adapter file bytes, dense merged checkpoint bytes) of the run's model, as io.save writes them."""
    from . import io

    model = build_model(run, dataset_of(run))
    with tempfile.TemporaryDirectory() as tmp:
        rep = io.save(model, tmp, arch=dict(run.arch))
    return rep.bytes, rep.full_bytes


def _fmt_r(r: float) -> str:
    return "> max rank" if math.isinf(r) else str(int(r))


def write_report(study: Mapping[str, Any], out: str | Path, eps: tuple[float, ...] = EPS) -> str:
    import torch

    out = Path(out)
    store = ResultsStore(out / "runs.sqlite")
    df = study_frame(study, store)
    if df.empty:
        raise ValueError(f"no finished runs of {study['study']!r} in {out / 'runs.sqlite'}: run the sweep first")
    task = dataset_of(runs_of(study)[0]).task
    metric = "test_acc" if task == "classification" else "test_loss"
    table = rank_table(df, metric=metric)
    sizes = {}
    for run in runs_of(study, baselines=False):
        r = run.scaffold.get("r")
        if r not in sizes:
            sizes[r] = adapter_bytes(run)
    table["adapter bytes"] = [sizes.get(r, (math.nan,))[0] if r != "full" else math.nan for r in table["r"]]
    full_bytes = next(iter(sizes.values()))[1] if sizes else math.nan
    table.to_csv(out / "table.csv", index=False)
    df.to_csv(out / "runs.csv", index=False)
    plot_rank(df, out / "rank.png", metric=metric, title=f"{study['study']}")

    lines = [f"# {study['study']}", "",
             f"Dataset `{json.dumps(study['dataset'])}`, architecture `{json.dumps(study['arch'])}`, "
             f"seeds {list(study['seeds'])}; metric `{metric}` on the test split after the last epoch. "
             f"Recovery = LottaLoRA mean / full-training mean. A dense checkpoint of the merged model takes "
             f"{full_bytes:,} bytes.", "", markdown(table, {"adapter bytes": "{:,.0f}"})]
    has_full = (df["cfg.method"] == "full").any()
    if has_full and (df["cfg.method"] == "lotta").any():
        lines += ["Saturation rank r*(eps) = min{r : metric within eps of full training}, "
                  "95% bootstrap CI over seeds:", "", "| eps | r* | CI |", "|---|---|---|"]
        for e in eps:
            sr = SaturationRank.from_frame(df, metric=metric, eps=e)
            lines.append(f"| {e:g} | {_fmt_r(sr.r_star_)} | [{_fmt_r(sr.ci_[0])}, {_fmt_r(sr.ci_[1])}] |")
        lines.append("")
    lines += ["![metric and beta vs rank](rank.png)", ""]
    failed = [r for r in store.rows(study["study"]) if r["status"] == "failed"]
    if failed:
        lines += [f"**{len(failed)} failed run(s)**; first error: `{failed[0]['error'].splitlines()[0]}`", ""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    meta = {"study": study, "version": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "runs": [r.config() | {"run_id": r.run_id} for r in runs_of(study)],
            "n_done": int(len(df)), "n_failed": len(failed)}
    (out / "study.json").write_text(json.dumps(meta, sort_keys=True, indent=1) + "\n")
    return text
