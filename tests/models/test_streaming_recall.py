"""A fact given in one call is recalled in a later call through the saved state, not without it.

A tiny Titans model (2 layers, width 64, linear memory) is trained for 300 steps on multi-query
associative recall (MQAR: key-value pairs, then the keys again, the value is the target). At
test time each sequence is cut in two calls: call 1 = the pairs (the facts), call 2 = the
queries. Continuing call 2 from call 1's state (through a state file) recalls the values; a
fresh state cannot. Measured (seed 0, 1 thread): mean answer log-prob -0.07 with the state,
-5.9 fresh (chance -ln 32 = -3.47); accuracy 99.6% vs 3.6%. Seeds 1 and 2 gave -0.02 / -0.76
with the state (fresh -6.6 / -4.6), so the 2-nat margin asserted below holds with room to
spare. Freezing the memory in call 1 removes the recall (-4.8); freezing it in call 2 keeps
most of it (-1.7, 74%). About 40 s on a shared 2-core machine, hence ``slow``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nestlearn.data.synthetic.mqar import mqar_segment
from nestlearn.models import (
    ModelConfig,
    build_model,
    frozen_memory,
    load_state,
    save_state,
)

V, T, KV, STEPS, BATCH = 64, 32, 4, 300, 32
FACTS = 2 * KV  # call 1: k1 v1 ... k4 v4; call 2: the query region


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    mixer = {"memory": "linear", "chunk_size": 8, "max_lr": 0.5}
    cfg = ModelConfig(family="titans", vocab_size=V, dim=64, n_layers=2, n_heads=2,
                      max_seq_len=T, mixer=mixer)  # fmt: skip
    model = build_model(cfg, seed=0)
    data = mqar_segment(STEPS * BATCH, vocab_size=V, seq_len=T, num_kv_pairs=KV,
                        random_non_queries=False, seed=0)  # fmt: skip
    x_all, y_all = torch.from_numpy(data.inputs), torch.from_numpy(data.targets)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for s in range(STEPS):
        lr = 3e-3 * min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / STEPS))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = x_all[s * BATCH : (s + 1) * BATCH], y_all[s * BATCH : (s + 1) * BATCH]
        logits, _ = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    test = mqar_segment(256, vocab_size=V, seq_len=T, num_kv_pairs=KV,
                        random_non_queries=False, seed=0, split="test")  # fmt: skip
    return model, torch.from_numpy(test.inputs), torch.from_numpy(test.targets), losses


def _answer_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """Mean log-prob of the right value and accuracy over the scored (query) positions."""
    mask = targets != -100
    lp = logits.log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    acc = (logits.argmax(-1) == targets)[mask].float().mean().item()
    return lp[mask].mean().item(), acc


@pytest.mark.slow
@torch.no_grad()
def test_a_fact_from_an_earlier_call_is_recalled_through_the_state(trained, tmp_path):
    model, x, y, losses = trained
    assert losses[-1] < 0.3 * losses[0]
    facts, queries, answers = x[:, :FACTS], x[:, FACTS:], y[:, FACTS:]
    assert (y[:, :FACTS] == -100).all()  # the answers are all in call 2
    # call 1 in one "process": the facts, state saved to a file
    _, state = model(facts, return_state=True)
    path = save_state(state, tmp_path / "facts.safetensors", model)
    # call 2 in another: the queries, from the file vs from a fresh state
    with_state, _ = model(queries, state=load_state(path, model, batch_size=x.shape[0]))
    fresh, _ = model(queries, state=model.init_state(x.shape[0]))
    lp_state, acc_state = _answer_scores(with_state, answers)
    lp_fresh, acc_fresh = _answer_scores(fresh, answers)
    assert lp_state > lp_fresh + 2.0, (lp_state, lp_fresh)
    assert acc_state > 0.8 and acc_fresh < 0.2, (acc_state, acc_fresh)
    # call 1 with the memory frozen learns nothing, so call 2 cannot recall
    with frozen_memory(model):
        _, frozen_state = model(facts, return_state=True)
    lp_frozen1, _ = _answer_scores(model(queries, state=frozen_state)[0], answers)
    assert lp_state > lp_frozen1 + 2.0, (lp_state, lp_frozen1)
    # call 2 frozen still reads what call 1 wrote; worse than unfrozen, since the trained model
    # also uses the writes made during call 2 itself (zeroing call 1's momentum instead costs
    # almost nothing: -0.079 vs -0.072)
    with frozen_memory(model):
        lp_frozen2, acc_frozen2 = _answer_scores(model(queries, state=state)[0], answers)
    print(f"answer log-prob / accuracy: state {lp_state:.3f} / {acc_state:.3f}, fresh "
          f"{lp_fresh:.3f} / {acc_fresh:.3f}, call 1 frozen {lp_frozen1:.3f}, call 2 frozen "
          f"{lp_frozen2:.3f} / {acc_frozen2:.3f}")  # fmt: skip
    assert lp_frozen2 > lp_fresh + 2.0 and acc_frozen2 > 0.5, (lp_frozen2, acc_frozen2)
