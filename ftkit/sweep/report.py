"""What a sweep shows: `sweep.json` and `report.md` (the leaderboard on validation, the final test comparison)
and Optuna's own plots (optimisation history, parameter importances) as PNGs through matplotlib's Agg backend."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ftkit import runs
from ftkit.evaluation import reports
from ftkit.evaluation.stats import format_interval
from ftkit.sweep.final import FinalTest

HISTORY_PNG = "optimization_history.png"
IMPORTANCE_PNG = "param_importances.png"


def ranked(trials: list[FrozenTrial], maximize: bool) -> list[FrozenTrial]:
    """Completed trials, best validation value first (ties: the earlier trial)."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return sorted(done, key=lambda t: (-t.value if maximize else t.value, t.number))  # type: ignore[operator]


def row(trial: FrozenTrial) -> dict[str, Any]:
    """One leaderboard row from the trial's Optuna record (its user attributes were set by the objective)."""
    attrs = trial.user_attrs
    return {
        "trial": trial.number,
        "state": trial.state.name.lower(),
        "params": trial.params,
        "value": attrs.get("value", trial.value),
        "ci": attrs.get("ci"),
        "kept_step": attrs.get("kept_step"),
        "steps": attrs.get("steps"),
        "pruned_at": attrs.get("pruned_at"),
        "train_s": attrs.get("train_s"),
        "trial_s": attrs.get("trial_s"),
        "retry_of": optuna.storages.RetryFailedTrialCallback.retried_trial_number(trial),
        "run_dir": attrs.get("run_dir"),
    }


def overhead(rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """Trial time beyond training (model load, adapter save, validation CI, bookkeeping), summed over trials."""
    timed = [r for r in rows if r["trial_s"] and r["train_s"]]
    if not timed:
        return None
    total, training = sum(r["trial_s"] for r in timed), sum(r["train_s"] for r in timed)
    return {"trial_s": round(total, 1), "train_s": round(training, 1), "share": round((total - training) / total, 4)}


def write(
    folder: Path,
    study: optuna.Study,
    metric: str,
    maximize: bool,
    final: FinalTest | None,
    setup_s: float,
) -> list[Path]:
    trials = study.get_trials(deepcopy=False)
    board = [row(t) for t in ranked(trials, maximize)] + [
        row(t) for t in trials if t.state != TrialState.COMPLETE and t.state != TrialState.WAITING
    ]
    summary: dict[str, Any] = {
        "study": study.study_name,
        "metric": metric,
        "direction": "maximize" if maximize else "minimize",
        "sampler": type(study.sampler).__name__,
        "pruner": type(study.pruner).__name__,
        "setup_s": round(setup_s, 1),
        "overhead": overhead(board),
        "leaderboard": board,
        "test": None,
    }
    if final is not None:
        head = final.head_to_head
        summary["test"] = {
            "metrics": reports.to_json(final.report),
            "winner": final.labels[0],
            "runner_up": final.labels[1] if len(final.labels) > 1 else None,
            "head_to_head": None
            if head is None
            else {
                "difference": head.difference,
                "p_value": head.p_value,
                "test": head.test,
                "significant": head.significant,
            },
            "verdict": final.verdict(),
        }
    written = [folder / "sweep.json", folder / "report.md"]
    runs.write_json(written[0], summary)
    runs.write_text(written[1], _markdown(summary, final))
    return written + _plots(folder, study)


def _markdown(summary: dict[str, Any], final: FinalTest | None) -> str:
    lines = [
        f"# Sweep {summary['study']}",
        "",
        f"Chosen by validation {summary['metric']} ({summary['direction']}); sampler {summary['sampler']}, "
        f"pruner {summary['pruner']}. The test split was read only for the final comparison below.",
        "",
        f"| trial | state | parameters | validation {summary['metric']} (95% CI) | kept step | steps | time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary["leaderboard"]:
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items())
        if r["value"] is None:
            value = "—"
        elif r["ci"] is None:
            value = f"{r['value']:.3f} (last report; no CI for a pruned trial)"
        else:
            value = format_interval(r["value"], *r["ci"])
        state = r["state"] + (f" at step {r['pruned_at']}" if r["pruned_at"] else "")
        state += f" (retry of {r['retry_of']})" if r["retry_of"] is not None else ""
        lines.append(
            f"| {r['trial']} | {state} | {params} | {value} | {r['kept_step'] or '—'} | {r['steps'] or '—'} "
            f"| {r['trial_s'] or '—'} |"
        )
    if summary["overhead"]:
        o = summary["overhead"]
        lines += [
            "",
            f"Time: {o['trial_s']} s in trials, {o['train_s']} s of it training; the rest (loading the base model, "
            f"saving, the validation CI, bookkeeping) is {100 * o['share']:.1f} % of trial time. Preparing the data "
            f"once for the sweep took {summary['setup_s']} s.",
        ]
    lines += ["", "## Test", ""]
    if final is None:
        lines.append("No trial finished: nothing to test.")
    else:
        lines += ["```", reports.render_table(final.report), "```", "", f"**{final.verdict()}.**"]
    lines += ["", f"![optimisation history]({HISTORY_PNG})", "", f"![parameter importances]({IMPORTANCE_PNG})", ""]
    return "\n".join(lines)


def _plots(folder: Path, study: optuna.Study) -> list[Path]:
    """Optuna's matplotlib plots; importances need two finished trials and a varied parameter, else skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    written = []
    for name, plot in ((HISTORY_PNG, plots.plot_optimization_history), (IMPORTANCE_PNG, plots.plot_param_importances)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                axes = plot(study)
            except (ValueError, RuntimeError):
                continue
        figure = axes.get_figure(root=True)
        assert figure is not None  # a plotted Axes belongs to a figure
        figure.savefig(folder / name, dpi=100, bbox_inches="tight")
        plt.close(figure)
        written.append(folder / name)
    return written
