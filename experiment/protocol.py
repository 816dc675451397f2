"""Which sets each dataset is evaluated on, and how (METHOD.md §8.3), for training and for eval_model.py."""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dataset.base import Split
from lib.recall_ks import RECALL_KS
from metriclearning.evaluation import evaluate_retrieval

NMI_AUTO_MAX_POINTS = 20_000


@dataclass(frozen=True)
class EvalTask:
    prefix: str  # "" for the main metrics, "val/", "small/", "medium/"
    queries: Split
    gallery: Split | None = None  # None: self-retrieval within ``queries``

    @property
    def n_points(self) -> int:
        return len(self.queries.labels) + (0 if self.gallery is None else len(self.gallery.labels))


def evaluation_tasks(
    dataset_name: str, splits: dict[str, Split], *, val: Split | None = None, all_vid_lists: bool = False
) -> list[EvalTask]:
    """The evaluation of one epoch: main set first, then VehicleID's smaller lists, then validation."""
    if dataset_name == "inshop":
        tasks = [EvalTask("", splits["query"], splits["gallery"])]
    elif dataset_name == "vid":
        tasks = [EvalTask("", splits["large"])]
        if all_vid_lists:
            tasks += [EvalTask("small/", splits["small"]), EvalTask("medium/", splits["medium"])]
    else:
        tasks = [EvalTask("", splits["eval"])]
    if val is not None:
        tasks.append(EvalTask("val/", val))
    return tasks


def nmi_enabled(train_nmi: str, main_task: EvalTask) -> bool:
    """``--train-nmi auto`` computes NMI iff at most 20,000 points are clustered for it (METHOD.md §2.4)."""
    if train_nmi == "auto":
        return main_task.n_points <= NMI_AUTO_MAX_POINTS
    return train_nmi in ("1", 1, True)


def run_evaluation(
    tasks: list[EvalTask],
    embed: Callable[[Split], np.ndarray],
    *,
    dataset_name: str,
    with_nmi: bool,
    nmi_runs: int = 1,
    backend: str = "faiss",
    device=None,
    compute: bool = True,
) -> dict:
    """Metrics of every task, keyed as in METHOD.md §8.3 (``R@1``, ``val/R@1``, ``small/mARP``...).

    ``compute=False`` only embeds (other torchrun ranks take part in the extraction; rank 0 computes).
    """
    metrics: dict = {}
    for task in tasks:
        queries = embed(task.queries)
        if task.gallery is not None:
            gallery = embed(task.gallery)
        if not compute:
            continue
        if task.gallery is None:
            embeddings, labels, query_mask, gallery_mask = queries, task.queries.labels, None, None
        else:
            embeddings = np.concatenate([queries, gallery])
            labels = np.concatenate([task.queries.labels, task.gallery.labels])
            query_mask = np.arange(len(labels)) < len(queries)
            gallery_mask = ~query_mask
        result = evaluate_retrieval(
            embeddings,
            labels,
            recall_ks=RECALL_KS[dataset_name],
            with_nmi=with_nmi,
            nmi_runs=nmi_runs,
            query_mask=query_mask,
            gallery_mask=gallery_mask,
            backend=backend,
            device=device,
        )
        metrics.update({f"{task.prefix}{key}": value for key, value in result.items()})
    return metrics
