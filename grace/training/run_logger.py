"""Where a run's numbers go: ``metrics.jsonl``, ``rationales.jsonl``, wandb and the console.

The JSONL files are the record of truth (one JSON object per step / per logged rationale) and are
always written; wandb mirrors them when ``logger.backend=wandb`` (offline unless configured online).
On resume, lines from steps after the checkpoint are dropped first: those steps are about to be redone.

Evaluation results (a ``ComparisonTable``: the final before/after table of a training run, a
``grace-eval`` run, a periodic held-out evaluation) go to wandb with ``log_evaluation``: one summary key
per row and task (``<name>/<row>/<task>``, ``<name>/<row>/mean``), the short ``<name>/<task>`` and
``<name>/mean`` for the primary row (the last: the trained model of a before/after table), and the table
itself as a ``wandb.Table``, so a sweep's dashboard can sort its jobs by score.
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from grace.evaluation.report import ComparisonTable

METRICS_FILE = "metrics.jsonl"
RATIONALES_FILE = "rationales.jsonl"
WANDB_ID_FILE = "wandb_run_id.txt"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (``json`` reads the ``NaN`` / ``Infinity`` that ``json.dumps`` wrote)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep only the lines of ``path`` whose ``step`` is at most ``last_step``."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in kept))


def wandb_run_id(output_dir: Path, resumed_step: int) -> str:
    """A run resumed from a checkpoint continues its wandb run; a run that starts at step 0 gets a new one,
    so it never appends a second step 1 to the history of an earlier attempt in the same directory."""
    id_file = output_dir / WANDB_ID_FILE
    if resumed_step > 0 and id_file.is_file():
        return id_file.read_text().strip()
    return uuid.uuid4().hex[:12]


class RunLogger:
    def __init__(
        self,
        output_dir: Path,
        *,
        backend: str,
        config: dict[str, Any],
        resumed_step: int,
        project: str = "grace",
        entity: str | None = None,
        mode: str = "offline",
        name: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        job_type: str = "train",
    ):
        self.output_dir = output_dir
        self.metrics_path = output_dir / METRICS_FILE
        self.rationales_path = output_dir / RATIONALES_FILE
        for path in (self.metrics_path, self.rationales_path):
            truncate_jsonl(path, resumed_step)
        self.run = None
        if backend == "wandb":
            run_id = wandb_run_id(output_dir, resumed_step)
            (output_dir / WANDB_ID_FILE).write_text(run_id)
            self.run = self._start_wandb(run_id, config, project, entity, mode, name, group, tags or [], job_type)

    def _start_wandb(self, run_id, config, project, entity, mode, name, group, tags, job_type):
        import wandb

        return wandb.init(
            project=project,
            entity=entity,
            name=name,
            group=group,
            tags=tags,
            job_type=job_type,
            config=config,
            dir=str(self.output_dir),
            mode=mode,
            id=run_id,
            resume="allow",
            reinit="finish_previous",
            # wandb's banner and closing history/summary would bury the run's own end-of-run summary,
            # which says where the run is (``location``); failures still raise.
            settings=wandb.Settings(silent=True),
        )

    @property
    def location(self) -> str | None:
        """Where the wandb run is: its URL when online, its local folder when offline; None without wandb."""
        if self.run is None or self.run.settings.mode == "disabled":  # logger.mode=disabled: a no-op run
            return None
        return str(Path(self.run.dir).parent) if self.run.offline else self.run.url

    def log_step(self, metrics: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(metrics) + "\n")
        if self.run is not None:
            self.run.log({k: v for k, v in metrics.items() if k != "step"}, step=metrics["step"])

    def log_rationales(self, step: int, rows: list[dict[str, Any]]) -> None:
        with self.rationales_path.open("a") as handle:
            for row in rows:
                handle.write(json.dumps({"step": step, **row}) + "\n")
        if self.run is not None and rows:
            import wandb

            columns = list(rows[0])
            table = wandb.Table(columns=["step", *columns], data=[[step, *(row[c] for c in columns)] for row in rows])
            self.run.log({"rationales": table}, step=step)

    def log_evaluation(self, name: str, table: ComparisonTable, *, step: int | None = None) -> dict[str, float]:
        """An evaluation's scores into the run's summary, and its table (``name``/table); returns the summary
        keys written. ``step``: the training step it belongs to (periodic evaluation), or None."""
        scores = table.summary(name)
        if self.run is not None and table.rows:
            import wandb

            self.run.summary.update(scores)
            columns = ["encoder", "rationale", *table.tasks, "mean"]
            data = [[row.label, row.rationale, *(row.scores.get(t) for t in table.tasks), row.mean(table.tasks)] for row in table.rows]
            self.run.log({f"{name}/table": wandb.Table(columns=columns, data=data)}, **({} if step is None else {"step": step}))
        return scores

    def update_summary(self, values: dict[str, Any]) -> None:
        """Values the dashboard shows per run (e.g. the sweep objective); a no-op without wandb."""
        if self.run is not None:
            self.run.summary.update(values)

    def close(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
