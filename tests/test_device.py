"""Device placement: every library path runs with the model on a GPU and gives the CPU's numbers.

Skipped where no CUDA device is present (the project's CI machines); run wherever one is. The device
rule it checks: library functions take tensors from any device and return them where the caller
expects (scores and traces on the CPU, logits on the device of the input).
"""
from __future__ import annotations

import copy

import pytest
import torch

import icl_utils
from icl_utils import attribution, function_vectors as fv, knockout, vocab
from icl_utils.evaluation import score_head_ablations, score_prompts

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def _on(info, device):
    model = copy.deepcopy(info.model).to(device)
    return icl_utils.describe_model(model, info.tokenizer, f"{info.name}-{device}")


def test_logits_come_back_on_the_input_device(info, trace_final):
    resid = trace_final  # a CPU trace tensor (batch, d_model)
    assert info.logits_from_residual(resid).device == resid.device
    assert info.label_logits(info.final_norm(resid), [0, 1]).device == resid.device


@needs_cuda
def test_every_path_on_cuda_matches_the_cpu(info, prompts, batch):
    gpu = _on(info, "cuda")
    close = dict(atol=2e-3, rtol=2e-3)
    # scoring, shared prefixes, many ablations per pass
    for share in (False, True):
        torch.testing.assert_close(score_prompts(gpu, prompts, progress=False, share_prefix=share).label_logits,
                                   score_prompts(info, prompts, progress=False, share_prefix=share).label_logits, **close)
    sets = [[], [(0, 0)], [(1, 1)]]
    for got, want in zip(score_head_ablations(gpu, prompts, sets, progress=False),
                         score_head_ablations(info, prompts, sets, progress=False)):
        torch.testing.assert_close(got.label_logits, want.label_logits, **close)
    # traces and attribution (CPU traces meet GPU weights)
    traces = [icl_utils.run_with_trace(i, batch) for i in (gpu, info)]
    targets = batch.input_ids[torch.arange(len(batch.last_positions)), batch.last_positions]
    torch.testing.assert_close(attribution.head_importance(gpu, traces[0], targets),
                               attribution.head_importance(info, traces[1], targets), **close)
    vectors = traces[1].final_resid[:, 0]
    torch.testing.assert_close(vocab.project(gpu, vectors), vocab.project(info, vectors), **close)
    # knock-out replays and function-vector patching
    blocked = torch.zeros(len(batch.prompts), batch.input_ids.shape[1], batch.input_ids.shape[1], dtype=torch.bool)
    torch.testing.assert_close(knockout.last_position_runs(gpu, batch, [((), None)]),
                               knockout.last_position_runs(info, batch, [((), blocked)]), **close)
    means = torch.zeros(info.n_layers, info.n_heads, info.d_head)
    fv_prompts = [fv.FVPrompt(p.text, p.query, "foo") for p in prompts[:2]]
    for got, want in zip(fv.patched_answers(gpu, fv_prompts, [[], [(0, 0)]], means),
                         fv.patched_answers(info, fv_prompts, [[], [(0, 0)]], means)):
        torch.testing.assert_close(got.float(), want.float(), **close)
