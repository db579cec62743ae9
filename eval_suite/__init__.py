"""Eval tasks in clip_benchmark's layout: zero-shot classification and retrieval, suites as YAML data.

    from siftbench.eval_suite import load_suite, evaluate_model, summarize
    suite = load_suite("world", root=world / "eval")
    tasks = evaluate_model(model, preprocess, tokenizer, suite)
    summary = summarize(tasks, suite)          # {"average", "groups", "num_tasks", "skipped", "incomplete_groups"}
    write_eval_results_jsonl(path, tasks, suite)  # DataComp's eval_results.jsonl

Importing this package does not import torch; evaluation does.
"""

from .data import EvalDataError, MissingDatasetError, TaskData, open_task
from .export import datacomp_records, write_eval_results_jsonl
from .run import evaluate_model
from .suite import Suite, TaskSpec, available_suites, load_suite, suite_from_config, summarize
from .tasks import TASK_TYPES, EvalTask, TaskResult, ZeroShotClassification, ZeroShotRetrieval

__all__ = [
    "TASK_TYPES",
    "EvalDataError",
    "EvalTask",
    "MissingDatasetError",
    "Suite",
    "TaskData",
    "TaskResult",
    "TaskSpec",
    "ZeroShotClassification",
    "ZeroShotRetrieval",
    "available_suites",
    "datacomp_records",
    "evaluate_model",
    "load_suite",
    "open_task",
    "suite_from_config",
    "summarize",
    "write_eval_results_jsonl",
]
