"""Safety evaluation: each reply to a harmful prompt refused, engaged or broken, each reply to a
benign look-alike helpful, refused or broken, and accuracy on a task, for one or more models;
the numbers the sweep and the model card use.

Usage::

    prompts = load_prompt_sets(limit=8)          # the built-in sets, first 8 of each
    result = evaluate("path/to/model", prompts)  # keyword judge, greedy, batched
    result.summary()["refusal_rate"]
    write_report([result], "eval-out")           # records.jsonl, summary.json, summary.md
    Evaluator(prompts)("path/to/model")          # the same, bound to the prompts: a summary dict
"""

from mergekit_safety.evaluation.answers import answer_matches, extract_answer
from mergekit_safety.evaluation.eval_report import markdown_table, write_report
from mergekit_safety.evaluation.judge import Judge, KeywordJudge, load_judge
from mergekit_safety.evaluation.pipeline import EvalResult, check_model, evaluate
from mergekit_safety.evaluation.prompt_evaluator import Evaluator
from mergekit_safety.evaluation.prompts import PromptSets, TaskItem, load_prompt_sets

__all__ = [
    "EvalResult",
    "Evaluator",
    "Judge",
    "KeywordJudge",
    "PromptSets",
    "TaskItem",
    "check_model",
    "evaluate",
    "extract_answer",
    "load_judge",
    "load_prompt_sets",
    "markdown_table",
    "answer_matches",
    "write_report",
]
