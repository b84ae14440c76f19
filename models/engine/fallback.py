"""Any other causal LM (Qwen3-MoE, Mixtral, ...): the same API over transformers' own forward/generate."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .scheduler import RequestError


class TransformersEngine:
    """No continuous batching, cache tricks or graphs: requests run one by one through `generate()`."""

    def __init__(self, hf_model, max_batch: int, max_seq_len: int):
        self.model, self.max_batch, self.max_seq_len = hf_model.eval(), max_batch, max_seq_len
        self.device = next(hf_model.parameters()).device

    @torch.inference_mode()
    def generate(self, prompts_token_ids: Sequence[Sequence[int]], max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, stop_token_ids: Sequence[int] = (), **_) -> list[list[int]]:
        outs = []
        for prompt in prompts_token_ids:
            if not prompt:
                raise RequestError("empty prompt")
            ids = torch.tensor([list(prompt)], device=self.device)
            gen = self.model.generate(ids, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                                      temperature=temperature or None, top_k=top_k,
                                      eos_token_id=list(stop_token_ids) or None, pad_token_id=0)
            outs.append(gen[0, ids.shape[1]:].tolist())
        return outs

    def capture_graphs(self) -> float:
        """Nothing to capture: generate() runs transformers eagerly (the Engine's method, for one interface)."""
        return 0.0

    def warm_up(self) -> float:
        """Nothing to compile ahead: the Engine's method, for one interface."""
        return 0.0

    def submit(self, prompt_token_ids, max_new_tokens, on_token=None, **kwargs):
        tokens = self.generate([prompt_token_ids], max_new_tokens, **kwargs)[0]
        if on_token is not None:
            for t in tokens:
                on_token(0, t)
        return iter(tokens)

    @torch.inference_mode()
    def prefill_hidden(self, token_ids, lengths=None) -> torch.Tensor:
        ids = torch.as_tensor(token_ids, device=self.device)
        return self.model.model(input_ids=ids).last_hidden_state

    @torch.inference_mode()
    def prefill_logits(self, token_ids, lengths=None, last_only: bool = False) -> torch.Tensor:
        ids = torch.as_tensor(token_ids, device=self.device)
        logits = self.model(input_ids=ids).logits.float()
        if last_only:
            lens = torch.as_tensor(lengths if lengths is not None else [ids.shape[1]] * ids.shape[0], device=self.device)
            logits = logits[torch.arange(ids.shape[0], device=self.device), lens - 1]
        return logits
