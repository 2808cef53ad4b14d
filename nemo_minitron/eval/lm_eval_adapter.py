"""EleutherAI lm-eval adapter: standard tasks scored by our megatron model, in memory, at any TP × PP.

:class:`MegatronLM` implements ``loglikelihood``, ``loglikelihood_rolling`` and ``generate_until``
over :func:`nemo_minitron.models.forward.forward_logits`. The model is collective (TP/PP ranks
take part in every forward), so every rank processes every request in the same order and lm-eval
sees a single replica (``rank 0``, ``world_size 1``); rank 0 reports the results.

Needs the optional ``eval`` extra (``pip install nemo_minitron[eval]``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from nemo_minitron.models.forward import forward_logits

try:
    from lm_eval.api.model import LM
except ImportError:  # pragma: no cover - exercised only without the eval extra
    LM = object


def _require_lm_eval() -> None:
    if LM is object:
        raise ImportError("lm-eval is not installed: pip install 'nemo_minitron[eval]' (or pip install lm-eval)")


class MegatronLM(LM):
    """An ``lm_eval.api.model.LM`` over a megatron-core GPT model (this rank's stage) and its tokenizer."""

    def __init__(self, model, tokenizer, max_length: int, batch_size: int = 4, max_new_tokens: int = 64):
        """``tokenizer`` is a :class:`nemo_minitron.data.tokenizer.Tokenizer`; ``max_length`` the context window."""
        _require_lm_eval()
        super().__init__()
        self.model, self.tok = model, tokenizer
        self.max_length, self.batch_size, self.max_new_tokens = max_length, batch_size, max_new_tokens

    # ------------------------------------------------------------------ tokens
    @property
    def prefix_id(self) -> int:
        """Token the first prediction of a text is conditioned on (BOS when the tokenizer has one, else EOD)."""
        return self.tok.bos_id if self.tok.bos_id is not None else self.tok.eod_id

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation ids; trailing spaces of the context move to the continuation."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tok.encode(context + continuation)
        ctx = self.tok.encode(context)
        if whole[:len(ctx)] != ctx:  # the tokenizer merged across the boundary: encode the parts separately
            return [self.prefix_id, *ctx], self.tok.encode(continuation)
        return [self.prefix_id, *ctx], whole[len(ctx):]

    def _logits(self, rows: list[list[int]]) -> torch.Tensor:
        """fp32 logits ``[len(rows), max_len, V]`` of right-padded rows (causal: padding changes nothing before it)."""
        width = max(len(r) for r in rows)
        batch = torch.full((len(rows), width), self.tok.eod_id, dtype=torch.long)
        for i, r in enumerate(rows):
            batch[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        return forward_logits(self.model, batch).cpu()

    def _score(self, items: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Sum of log p(target tokens) and whether each is the greedy choice; items = (input ids, targets)."""
        out = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            logp = F.log_softmax(self._logits([inp for inp, _ in chunk]), dim=-1)
            for i, (inp, tgt) in enumerate(chunk):
                n = len(tgt)
                lp = logp[i, len(inp) - n:len(inp)]
                target = torch.tensor(tgt, dtype=torch.long)
                out.append((float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all())))
        return out

    def _window(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        """Input ids (context + continuation minus its last token, left-truncated to ``max_length``) and targets."""
        cont = continuation[-self.max_length:]
        inp = (context + continuation)[:-1][-self.max_length:]
        return inp, cont

    # ------------------------------------------------------------------ lm-eval API
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """``(log p(continuation | context), is_greedy)`` per request ``args = (context, continuation)``."""
        return self._score([self._window(*self._encode_pair(*r.args)) for r in requests])

    def loglikelihood_rolling(self, requests) -> list[float]:
        """Log-likelihood of each whole text (``args = (text,)``), in disjoint windows of ``max_length`` targets."""
        results = []
        for r in requests:
            seq = [self.prefix_id, *self.tok.encode(r.args[0])]
            items = []
            for a in range(1, len(seq), self.max_length):
                b = min(a + self.max_length, len(seq))
                begin = max(0, b - 1 - self.max_length)
                items.append((seq[begin:b - 1], seq[a:b]))
            results.append(sum(score for score, _ in self._score(items)))
        return results

    def generate_until(self, requests) -> list[str]:
        """Greedy continuation of ``args = (context, gen_kwargs)`` up to ``max_gen_toks`` or a stop string."""
        results = []
        for r in requests:
            context, kwargs = r.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            budget = int(kwargs.get("max_gen_toks", self.max_new_tokens))
            ids = [self.prefix_id, *self.tok.encode(context)]
            new: list[int] = []
            text = ""
            for _ in range(budget):
                logits = self._logits([(ids + new)[-self.max_length:]])
                nxt = int(logits[0, min(len(ids) + len(new), self.max_length) - 1].argmax())
                if nxt == self.tok.eod_id:
                    break
                new.append(nxt)
                text = self.tok.decode(new)
                if any(s in text for s in until):
                    break
            results.append(_cut(text, until))
        return results


def _cut(text: str, until: list[str]) -> str:
    """``text`` up to (excluding) the earliest stop string."""
    cut = min((text.find(s) for s in until if s and s in text), default=-1)
    return text if cut < 0 else text[:cut]


def run_tasks(model, tokenizer, max_length: int, tasks: list[str], include_path: Optional[str] = None,
              limit: Optional[int] = None, num_fewshot: Optional[int] = None, batch_size: int = 4,
              max_new_tokens: int = 64) -> dict:
    """``lm_eval.simple_evaluate`` of ``tasks`` with the model in memory; returns lm-eval's ``results`` dict."""
    _require_lm_eval()
    import lm_eval
    from lm_eval.tasks import TaskManager

    lm = MegatronLM(model, tokenizer, max_length, batch_size=batch_size, max_new_tokens=max_new_tokens)
    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                                  num_fewshot=num_fewshot, log_samples=False)
    return out["results"] if out else {}
