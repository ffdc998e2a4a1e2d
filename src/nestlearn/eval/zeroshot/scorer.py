"""Log-likelihood scoring of text continuations with a nestlearn language model.

Axis legend: B batch (requests scored together), T time (tokens), V vocabulary.

The request semantics follow lm-evaluation-harness 0.4.13 (``TemplateLM`` + ``HFLM``), so the
native scorer and the lm-eval adapter (:mod:`nestlearn.studies.lm_eval_adapter`) give the same
numbers:

* **Encoding a pair**: trailing spaces of the context move to the continuation; the
  continuation's ids are ``encode(context + continuation)`` minus the ids of
  ``encode(context)``, so a BPE merge across the boundary is handled as lm-eval does.
* **Document start**: the training data separates documents with ``eos``, so every context
  starts with ``prefix_id`` (the tokenizer's ``eos_id``); an empty context is just
  ``[prefix_id]`` (lm-eval's ``prefix_token_id`` rule).
* **Too long**: the model sees the last ``max_length`` tokens of ``context + continuation``
  minus the final one (left truncation of the context). A continuation longer than
  ``max_length`` itself is scored in pieces of ``max_length`` tokens, each with the tokens
  before it as context, so it is always scored in full.
* **Rolling log-likelihood** (perplexity of whole documents): lm-eval's disjoint windows
  with one token of context: window 1 is ``[prefix] + doc[:L-1]`` predicting ``doc[:L]``,
  each later window predicts the next ``L`` tokens from the ``L`` tokens before them
  (the last window reuses earlier tokens as context so it is always full length).
* **Greedy** (LAMBADA ``acc``): every continuation token is the argmax of its logits.

Requests are scored longest first in batches of ``batch_size``, right-padded; a causal model
cannot see the padding, so the batch composition does not change a score (up to float
rounding; exactly in float64).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

Pair = tuple[list[int], list[int]]


def set_memory_updates(model: nn.Module, enabled: bool) -> bool:
    """Turn test-time memory updates (Hope, Titans, CMS) on or off; whether anything switched.

    ``set_memory_frozen(model, not enabled) > 0`` (the one freeze API,
    :mod:`nestlearn.memory.freeze`), which also honours the hook this scorer introduced: a model
    (or any of its submodules) may define ``set_memory_updates(enabled: bool)``; when the model
    itself defines it, only that is called (it is responsible for its parts). A model without
    test-time memory returns False.
    """
    from nestlearn.models.freeze import set_memory_frozen

    return set_memory_frozen(model, not enabled) > 0


def rolling_windows(tokens: Sequence[int], prefix_id: int, max_length: int) -> list[Pair]:
    """Split a document into ``(context, continuation)`` windows covering every token once.

    Same windows as lm-eval's ``get_rolling_token_windows(context_len=1)`` followed by
    ``make_disjoint_window``: ``sum of continuations == tokens``; each window's
    ``context + continuation`` is at most ``max_length + 1`` tokens.
    """
    toks = list(tokens)
    if not toks:
        return []
    first = min(max_length, len(toks))
    out: list[Pair] = [([prefix_id], toks[:first])]
    done = first
    while done < len(toks):
        end = min(done + max_length, len(toks))
        out.append((toks[end - max_length - 1 : done], toks[done:end]))
        done = end
    return out


class LMScorer:
    """Scores continuations with ``model``; see the module docstring for the exact rules.

    Args:
        model: a ``LanguageModel`` (anything with ``forward(idx [B, T]) -> (logits [B, T, V], _)``).
        tokenizer: a nestlearn tokenizer (``encode``, ``decode``, ``eos_id``).
        max_length: tokens the model sees at once; default ``model.cfg.max_seq_len``.
        batch_size: sequences per forward pass.
        prefix_id: document-start id put before every context; default ``tokenizer.eos_id``.
        progress: show tqdm bars.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        max_length: int | None = None,
        batch_size: int = 16,
        prefix_id: int | None = None,
        progress: bool = False,
    ) -> None:
        if max_length is None:
            cfg = getattr(model, "cfg", None)
            max_length = getattr(cfg, "max_seq_len", None)
            if max_length is None:
                raise ValueError("max_length is required for a model without cfg.max_seq_len")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if prefix_id is None:
            prefix_id = getattr(tokenizer, "eos_id", None)
            if prefix_id is None:
                raise ValueError(
                    "the tokenizer has no eos_id to mark a document start; pass prefix_id="
                )
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.prefix_id = int(prefix_id)
        self.progress = progress

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ encoding
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def encode_pair(self, context: str, continuation: str) -> Pair:
        """``(context ids, continuation ids)`` with the document-start id first."""
        if context == "":
            cont = self.encode(continuation)
            # lm-eval: a continuation that already starts with the prefix id keeps it as context
            if cont and cont[0] == self.prefix_id:
                return cont[:1], cont[1:]
            return [self.prefix_id], cont
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return [self.prefix_id, *ctx], whole[len(ctx) :]

    # ------------------------------------------------------------------- scoring
    def split_request(self, context: Sequence[int], continuation: Sequence[int]) -> list[Pair]:
        """Pieces of one request that each fit the model: ``[(context, continuation)]``.

        A continuation longer than ``max_length`` is scored in consecutive pieces of at most
        ``max_length`` tokens, each seeing the ``max_length`` tokens before its last target
        (lm-eval's HFLM would mis-index such a continuation; here it is scored in full).
        """
        if not context:
            raise ValueError("every request needs at least one context token")
        seq = list(context) + list(continuation)
        start = len(context)
        if len(continuation) <= self.max_length:
            return [(list(context), list(continuation))]
        pieces = []
        for a in range(start, len(seq), self.max_length):
            b = min(a + self.max_length, len(seq))
            pieces.append((seq[max(0, b - 1 - self.max_length) : a], seq[a:b]))
        return pieces

    @torch.no_grad()
    def loglikelihood_tokens(
        self, requests: Sequence[Pair], *, desc: str = "scoring"
    ) -> list[tuple[float, bool]]:
        """``(sum of log p(continuation | context), greedy?)`` per request, in input order."""
        pieces: list[Pair] = []
        owner: list[int] = []
        for i, (ctx, cont) in enumerate(requests):
            split = self.split_request(ctx, cont)
            pieces.extend(split)
            owner.extend([i] * len(split))
        scores: list[tuple[float, bool]] = [(0.0, True)] * len(pieces)
        order = sorted(range(len(pieces)), key=lambda i: -(len(pieces[i][0]) + len(pieces[i][1])))
        was_training = self.model.training
        self.model.eval()
        bar = tqdm(total=len(pieces), desc=desc, disable=not self.progress, leave=False)
        try:
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                for i, res in zip(batch, self._score_batch([pieces[i] for i in batch])):
                    scores[i] = res
                bar.update(len(batch))
        finally:
            bar.close()
            self.model.train(was_training)
        totals = [0.0] * len(requests)
        greedy = [True] * len(requests)
        for i, (ll, g) in zip(owner, scores):
            totals[i] += ll
            greedy[i] = greedy[i] and g
        return list(zip(totals, greedy))

    def _score_batch(self, pairs: list[Pair]) -> list[tuple[float, bool]]:
        rows, conts = [], []
        for ctx, cont in pairs:
            rows.append((ctx + cont)[-(self.max_length + 1) :][:-1])
            conts.append(cont)
        width = max(len(r) for r in rows)
        idx = torch.full((len(rows), width), self.prefix_id, dtype=torch.long)
        for b, r in enumerate(rows):
            idx[b, : len(r)] = torch.tensor(r, dtype=torch.long)
        logits, _ = self.model(idx.to(self.device))  # [B, T, V]
        out = []
        for b, (r, cont) in enumerate(zip(rows, conts)):
            if not cont:
                out.append((0.0, True))
                continue
            n = len(r)
            lg = logits[b, n - len(cont) : n]
            lg = lg.double() if lg.dtype == torch.float64 else lg.float()
            logp = F.log_softmax(lg, dim=-1)  # [len(cont), V]
            target = torch.tensor(cont, device=logp.device)
            ll = logp.gather(-1, target[:, None]).sum().item()
            greedy = bool((logp.argmax(-1) == target).all())
            out.append((float(ll), greedy))
        return out

    def loglikelihood(
        self, requests: Sequence[tuple[str, str]], *, desc: str = "scoring"
    ) -> list[tuple[float, bool]]:
        """Score ``(context, continuation)`` strings (see :meth:`encode_pair`)."""
        return self.loglikelihood_tokens([self.encode_pair(c, x) for c, x in requests], desc=desc)

    def loglikelihood_rolling(self, texts: Sequence[str], *, desc: str = "rolling") -> list[float]:
        """Total log-likelihood of each whole text (the first token conditioned on the prefix)."""
        windows: list[Pair] = []
        owner: list[int] = []
        for i, text in enumerate(texts):
            w = rolling_windows(self.encode(text), self.prefix_id, self.max_length)
            windows.extend(w)
            owner.extend([i] * len(w))
        totals = [0.0] * len(texts)
        for i, (ll, _) in zip(owner, self.loglikelihood_tokens(windows, desc=desc)):
            totals[i] += ll
        return totals

    # ---------------------------------------------------------------- generation
    @torch.no_grad()
    def generate_until(
        self, requests: Sequence[tuple[str, Sequence[str], int]], *, desc: str = "generating"
    ) -> list[str]:
        """Greedy continuation of each ``(context, stop strings, max new tokens)``.

        The text is cut before the first stop string. Requests whose contexts have the same
        token length are decoded together (no padding, so recurrent state stays exact);
        contexts are left-truncated to leave room for the new tokens.
        """
        from nestlearn.models import FAMILIES

        cfg = getattr(self.model, "cfg", None)
        fam = FAMILIES.get(getattr(cfg, "family", ""), None)
        use_state = bool(fam and fam.supports_decode)
        encoded = []
        for context, _stops, max_new in requests:
            if max_new <= 0:
                raise ValueError(f"max new tokens must be positive, got {max_new}")
            keep = max(1, self.max_length - max_new)
            encoded.append([self.prefix_id, *self.encode(context)][-keep:])
        groups: dict[tuple[int, int], list[int]] = {}
        for i, ids in enumerate(encoded):
            groups.setdefault((len(ids), int(requests[i][2])), []).append(i)
        out = [""] * len(requests)
        was_training = self.model.training
        self.model.eval()
        try:
            for (_, max_new), members in tqdm(
                list(groups.items()), desc=desc, disable=not self.progress, leave=False
            ):
                for start in range(0, len(members), self.batch_size):
                    chunk = members[start : start + self.batch_size]
                    stops = [list(requests[i][1]) for i in chunk]
                    texts = self._greedy(
                        torch.tensor([encoded[i] for i in chunk]), max_new, stops, use_state
                    )
                    for i, t in zip(chunk, texts):
                        out[i] = t
        finally:
            self.model.train(was_training)
        return out

    def _greedy(
        self, idx: torch.Tensor, max_new: int, stops: list[list[str]], use_state: bool
    ) -> list[str]:
        idx = idx.to(self.device)
        new: list[list[int]] = [[] for _ in range(idx.shape[0])]
        done = [False] * idx.shape[0]
        eos = getattr(self.tokenizer, "eos_id", None)
        state = None
        seq = idx
        for step in range(max_new):
            if use_state:
                logits, state = self.model(
                    seq if step == 0 else seq[:, -1:], state=state, return_state=True
                )
            else:
                logits, _ = self.model(seq[:, -self.max_length :])
            nxt = logits[:, -1].argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            for b, t in enumerate(nxt.tolist()):
                if done[b]:
                    continue
                if t == eos:
                    done[b] = True
                    continue
                new[b].append(t)
                text = self.tokenizer.decode(new[b])
                if any(s and s in text for s in stops[b]):
                    done[b] = True
            if all(done):
                break
        texts = []
        for b, ids in enumerate(new):
            text = self.tokenizer.decode(ids)
            for s in stops[b]:
                if s:
                    text = text.split(s)[0]
            texts.append(text)
        return texts
