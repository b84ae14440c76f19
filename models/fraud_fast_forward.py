"""The fraud scorer's inference forward on CPU as a few fused tensor ops over the model's own weights.

`FraudModel.fast_logits` goes through transformers' DeepseekV3 modules: per layer ~40 small ops,
each with Python and dispatch overhead, the kv up-projection of every token in the last layer, and
the routed experts as a loop over hit experts. For a 16-token context of width 64 the arithmetic is
small (~0.7 MFLOP a transaction) and that overhead dominates (~95 us a transaction at batch 500 on
one core). `FastFraudForward` computes the same logits with:

* one matmul per layer for everything read from the normed input (q, the compressed kv and k_rope);
  one for the shared expert's gate+up and the router;
* the last layer's attention for the current transaction's token only, in MLA's absorbed form
  (scores and values over the 32-wide latent, so the kv up-projection of the history tokens is
  never materialised);
* routed experts by sorting the (token, expert) pairs once and one matmul pair per expert;
* a large batch in passes of `CHUNK` transactions, so the activations stay in cache.

Everything is derived from the model at construction (the backbone's `DeepseekV3Config` and the
weights of its modules, the embedding through `FraudModel.embed`): a checkpoint with other input
fields, widths, depths, head or expert counts runs unchanged. It is read-only over the weights
(rebuild it after loading new ones). tests/test_fraud_fast_forward.py holds its logits to the
reference forward's within 1e-4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


#: Transactions per pass: a pass's activations (~16 tokens x width 64 x 4 B each) then stay in the
#: core's L2 through the ~60 elementwise ops. Measured on one core at batch 1,024 (thread CPU time):
#: all at once 65 us a transaction, 256 at a time 50, 128 53, 64 66.
CHUNK = 256


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope_maps(rd: int, interleave: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(Mp, Mq) [rd, rd] with rope(x) = (x @ Mp) * cos + (x @ Mq) * sin, cos/sin the model's full-width
    tables (transformers' `apply_rotary_pos_emb[_interleave]`): folded into the projection weights,
    the rotation becomes two contiguous columns blocks of one matmul and a multiply-add."""
    mp, mq, half = torch.zeros(rd, rd), torch.zeros(rd, rd), rd // 2
    for i in range(half):
        if interleave:  # out = cat(x_even * cos - x_odd * sin, x_odd * cos + x_even * sin)
            mp[2 * i, i] = mp[2 * i + 1, half + i] = 1.0
            mq[2 * i + 1, i], mq[2 * i, half + i] = -1.0, 1.0
        else:  # out = x * cos + cat(-x[half:], x[:half]) * sin
            mp[i, i] = mp[half + i, half + i] = 1.0
            mq[half + i, i], mq[i, half + i] = -1.0, 1.0
    return mp, mq


@dataclass
class _Layer:
    ln1: torch.Tensor
    ln2: torch.Tensor
    # rows: q (per head: nope, then the rope part as its Mp and Mq images) when q is a plain projection,
    # then kv latent (r), k_rope @ Mp (rd), k_rope @ Mq (rd)
    w_q: torch.Tensor | None
    w_kv: torch.Tensor
    b_kv: torch.Tensor | None
    q_lora: Any  # (q_a weight, q_a bias, q_a norm weight) when the model has a q low-rank path (w_q after it)
    kv_ln: torch.Tensor
    w_uk: torch.Tensor  # [nh, nope, r]: latent -> per-head key (no rope part)
    w_uv: torch.Tensor  # [nh, v, r]: latent -> per-head value
    w_kvb: torch.Tensor  # [nh*(nope+v), r]
    w_o: torch.Tensor
    b_o: torch.Tensor | None
    mlp: dict[str, Any]  # dense: {"gate_up", "down"}; moe: + router fields


class FastFraudForward:
    """Logits of `FraudModel.fast_logits`, computed from the same weights without the module tree."""

    def __init__(self, model: Any):
        # plain tensors even when built inside inference mode: reasons run this forward with autograd
        with torch.inference_mode(False), torch.no_grad():
            self._build(model)

    def _build(self, model: Any) -> None:
        bb = model.backbone
        cfg = bb.config
        self.model = model
        self.eps = cfg.rms_norm_eps
        self.nh = cfg.num_attention_heads
        self.nope, self.rd, self.vd = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.r = cfg.kv_lora_rank
        self.mp, self.mq = rope_maps(self.rd, bool(getattr(cfg, "rope_interleave", True)))
        self.act = F.silu if cfg.hidden_act == "silu" else _act(cfg.hidden_act)
        self.scaling = bb.layers[0].self_attn.scaling
        self.norm = bb.norm.weight.detach()
        self.head_w, self.head_b = model.head.weight.detach(), model.head.bias.detach()
        self.layers = [self._layer(layer) for layer in bb.layers]
        self._rope: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _q_rows(self, w: torch.Tensor) -> torch.Tensor:
        """q weight rows regrouped: every head's nope rows, then every head's rope rows @ Mp, then @ Mq."""
        per_head = w.view(self.nh, self.nope + self.rd, -1)
        rope = per_head[:, self.nope:]
        return torch.cat([per_head[:, :self.nope].reshape(-1, w.shape[-1]),
                          (self.mp.T @ rope).reshape(-1, w.shape[-1]), (self.mq.T @ rope).reshape(-1, w.shape[-1])])

    def _layer(self, layer: Any) -> _Layer:
        a = layer.self_attn
        d = lambda t: None if t is None else t.detach()  # noqa: E731
        kv_w, kv_b = a.kv_a_proj_with_mqa.weight.detach(), d(a.kv_a_proj_with_mqa.bias)
        k_rope = kv_w[self.r:]
        w_kv = torch.cat([kv_w[:self.r], self.mp.T @ k_rope, self.mq.T @ k_rope])
        b_kv = None if kv_b is None else torch.cat([kv_b[:self.r], self.mp.T @ kv_b[self.r:], self.mq.T @ kv_b[self.r:]])
        if a.q_proj is not None:
            w_q, q_lora = self._q_rows(a.q_proj.weight.detach()), None
        else:
            w_q = self._q_rows(a.q_b_proj.weight.detach())
            q_lora = (d(a.q_a_proj.weight), d(a.q_a_proj.bias), d(a.q_a_layernorm.weight))
        kvb = a.kv_b_proj.weight.detach()
        per_head = kvb.view(self.nh, self.nope + self.vd, self.r)
        mlp = layer.mlp
        if hasattr(mlp, "experts"):
            g, sh = mlp.gate, mlp.shared_experts
            out = {"moe": True, "router": g.weight.detach().float(), "bias": g.e_score_correction_bias.detach().float(),
                   "top_k": g.top_k, "groups": g.num_group, "topk_group": g.topk_group, "norm": g.norm_topk_prob,
                   "scale": g.routed_scaling_factor, "n_experts": g.num_experts,
                   "shared_gate_up": torch.cat([sh.gate_proj.weight, sh.up_proj.weight]).detach(),
                   "shared_down": sh.down_proj.weight.detach(),
                   "gate_up": mlp.experts.gate_up_proj.detach(), "down": mlp.experts.down_proj.detach()}
        else:
            out = {"moe": False, "shared_gate_up": torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach(),
                   "shared_down": mlp.down_proj.weight.detach()}
        return _Layer(layer.input_layernorm.weight.detach(), layer.post_attention_layernorm.weight.detach(), w_q,
                      w_kv, b_kv, q_lora, a.kv_a_layernorm.weight.detach(), per_head[:, :self.nope].contiguous(),
                      per_head[:, self.nope:].contiguous(), kvb, a.o_proj.weight.detach(), d(a.o_proj.bias), out)

    def rope(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Full-width cos/sin [T, rd] from the model's own rotary table, and the causal mask [T, T]."""
        T = h.shape[1]
        if T not in self._rope:
            with torch.inference_mode(False), torch.no_grad():  # constants autograd may save: plain tensors
                probe = torch.zeros(1, T, 1, dtype=h.dtype)
                cos, sin = self.model.backbone.rotary_emb(probe, torch.arange(T)[None])
                mask = torch.full((T, T), float("-inf")).triu(1)
                self._rope[T] = (cos[0].to(h.dtype).contiguous(), sin[0].to(h.dtype).contiguous(), mask.to(h.dtype))
        return self._rope[T]

    @torch.inference_mode()
    def logits(self, t: dict[str, torch.Tensor]) -> torch.Tensor:
        n = next(iter(t.values())).shape[0]
        if n <= CHUNK:
            return self._logits(t)
        return torch.cat([self._logits({k: v[i:i + CHUNK] for k, v in t.items()}) for i in range(0, n, CHUNK)])

    def _logits(self, t: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.from_embeds(self.model.embed(t))

    def from_embeds(self, h: torch.Tensor) -> torch.Tensor:
        """Logits [B] from token embeddings [B, T, H] (`FraudModel.forward_embeds`); differentiable in
        `h` outside inference mode, which is how reasons (gradient x input) use it."""
        cos, sin, mask = self.rope(h)
        for layer in self.layers[:-1]:
            h = h + self._attention_all(layer, _rms(h, layer.ln1, self.eps), cos, sin, mask)
            h = h + self._mlp(layer, _rms(h, layer.ln2, self.eps))
        last = self.layers[-1]
        x = h[:, -1] + self._attention_last(last, _rms(h, last.ln1, self.eps), cos, sin)
        x = x + self._mlp(last, _rms(x, last.ln2, self.eps))
        x = _rms(x, self.norm, self.eps)
        return F.linear(x, self.head_w, self.head_b).squeeze(-1)

    # -- attention ---------------------------------------------------------------------------------
    def _q(self, layer: _Layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Queries [..., nh, nope+rd] with the rope applied; x [..., H], cos/sin broadcastable to [..., 1, rd]."""
        if layer.q_lora is not None:
            qa_w, qa_b, qa_ln = layer.q_lora
            x = _rms(F.linear(x, qa_w, qa_b), qa_ln, self.eps)
        y = F.linear(x, layer.w_q)
        n, nr = self.nh * self.nope, self.nh * self.rd
        shape = (*y.shape[:-1], self.nh, -1)
        q_rope = y[..., n:n + nr].view(shape) * cos + y[..., n + nr:].view(shape) * sin
        return torch.cat([y[..., :n].view(shape), q_rope], -1)

    def _kv(self, layer: _Layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Normed kv latent [B, T, r] and the rotated shared key part [B, T, rd]."""
        y = F.linear(x, layer.w_kv, layer.b_kv)
        r, rd = self.r, self.rd
        return _rms(y[..., :r], layer.kv_ln, self.eps), y[..., r:r + rd] * cos + y[..., r + rd:] * sin

    def _attention_all(self, layer: _Layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self._q(layer, x, cos[:, None], sin[:, None]).transpose(1, 2)  # [B, nh, T, nope+rd]
        latent, k_rope = self._kv(layer, x, cos, sin)
        kv = F.linear(latent, layer.w_kvb).view(B, T, self.nh, self.nope + self.vd)
        k = torch.cat([kv[..., :self.nope], k_rope[:, :, None].expand(B, T, self.nh, self.rd)], -1)
        scores = torch.matmul(q, k.permute(0, 2, 3, 1)) * self.scaling + mask
        out = torch.matmul(torch.softmax(scores, -1), kv[..., self.nope:].transpose(1, 2))  # [B, nh, T, v]
        return F.linear(out.transpose(1, 2).reshape(B, T, self.nh * self.vd), layer.w_o, layer.b_o)

    def _attention_last(self, layer: _Layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """The last token's attention over all tokens (it sees every one) [B, H], in MLA's absorbed form:
        its per-head query is mapped into the latent space, so keys and values stay [B, T, r]."""
        B, T, _ = x.shape
        q = self._q(layer, x[:, -1], cos[-1], sin[-1])  # [B, nh, nope+rd]
        latent, k_rope = self._kv(layer, x, cos, sin)
        q_lat = torch.einsum("bhn,hnr->bhr", q[..., :self.nope], layer.w_uk)  # [B, nh, r]
        scores = torch.baddbmm(torch.bmm(q[..., self.nope:], k_rope.transpose(1, 2)), q_lat, latent.transpose(1, 2))
        ctx = torch.bmm(torch.softmax(scores * self.scaling, dim=-1), latent)  # [B, nh, r]
        out = torch.einsum("bhr,hvr->bhv", ctx, layer.w_uv).reshape(B, self.nh * self.vd)
        return F.linear(out, layer.w_o, layer.b_o)

    # -- feed-forward ------------------------------------------------------------------------------
    def _mlp(self, layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        m = layer.mlp
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        gu = F.linear(x, m["shared_gate_up"])
        g, u = gu.chunk(2, dim=-1)
        out = F.linear(self.act(g) * u, m["shared_down"])
        if m["moe"]:
            out = out + self._routed(m, x)
        return out.view(shape)

    def _routed(self, m: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
        """DeepseekV3TopkRouter's choice (sigmoid scores, correction bias, group-limited top-k) and the
        chosen experts' weighted sum; each expert runs once over its tokens."""
        scores = F.linear(x.float(), m["router"]).sigmoid()
        choice = scores + m["bias"]
        E, G = m["n_experts"], m["groups"]
        if G > 1:
            group_scores = choice.view(-1, G, E // G).topk(2, dim=-1)[0].sum(-1)
            keep = torch.zeros_like(group_scores).scatter_(1, group_scores.topk(m["topk_group"], dim=-1)[1], 1)
            choice = choice.masked_fill(~keep.bool().repeat_interleave(E // G, dim=1), float("-inf"))
        idx = choice.topk(m["top_k"], dim=-1, sorted=False)[1]
        w = scores.gather(1, idx)
        if m["norm"]:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        w = (w * m["scale"]).to(x.dtype)
        flat = idx.reshape(-1)
        order = torch.argsort(flat, stable=True)
        token = order // m["top_k"]
        counts = torch.bincount(flat, minlength=E).tolist()
        xs = x.index_select(0, token)
        ws = w.reshape(-1).index_select(0, order)
        ys = torch.empty_like(xs)
        start = 0
        for e, n in enumerate(counts):
            if n:
                seg = xs[start:start + n]
                g, u = F.linear(seg, m["gate_up"][e]).chunk(2, dim=-1)
                ys[start:start + n] = F.linear(self.act(g) * u, m["down"][e])
            start += n
        # back to (token, choice) order by a gather (the inverse permutation), then each token's k rows summed
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))
        return (ys * ws[:, None]).index_select(0, inverse).view(-1, m["top_k"], x.shape[-1]).sum(1)


def _act(name: str):
    from transformers.activations import ACT2FN

    return ACT2FN[name]
