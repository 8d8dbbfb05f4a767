"""icl_utils: the thin library behind the ICL-heads book. Each function is short enough to read."""
from .errors import LabelWordError, ModelNotAvailableError, PromptTooLongError, TaskFormatError
from .evaluation import ICLScores, design_prompts, score_calibrated, score_head_ablations, score_prompts, score_task
from .heads import HeadRanking, find_in_context_heads, rank_heads, top_heads
from .models import DEFAULT_MODEL, EMBEDDED_MODELS, ModelInfo, describe_model, load_model
from .prompts import (
    FOO_BAR,
    PromptBatch,
    PromptFormat,
    build_prompt_groups,
    build_prompts,
    calibration_prompts,
    encode_prompts,
    label_token_ids,
    render_prompt,
    task_pools,
)
from .reporting import ClaimSpec, Verdict, grade
from .tasks import Task, available_pair_tasks, available_tasks, load_pair_task, load_task
from .tracing import Trace, ablate_heads, ablate_neurons, edit_attention, head_writes, run_with_trace

__all__ = [
    "DEFAULT_MODEL", "EMBEDDED_MODELS", "FOO_BAR", "HeadRanking", "ICLScores", "LabelWordError",
    "ModelInfo", "ModelNotAvailableError", "PromptBatch", "PromptFormat", "PromptTooLongError",
    "Task", "TaskFormatError", "Trace", "ablate_heads", "ablate_neurons", "available_tasks",
    "build_prompt_groups", "build_prompts", "describe_model", "edit_attention", "encode_prompts", "find_in_context_heads",
    "head_writes", "label_token_ids", "load_model", "load_task", "rank_heads", "render_prompt",
    "run_with_trace", "score_prompts", "top_heads",
    "ClaimSpec", "Verdict", "grade", "task_pools", "calibration_prompts", "design_prompts", "score_calibrated",
    "score_head_ablations", "score_task", "available_pair_tasks", "load_pair_task",
]
