"""The fraud scorer's inference forward on CPU as a few fused tensor ops over the model's own weights.

`FraudModel.fast_logits` goes through transformers' DeepseekV3 modules: per layer ~40 small ops,
each with Python and dispatch overhead, the kv up-projection of every token, and the routed experts
as a loop over hit experts. For a 16-token context of width 64 the arithmetic is small (~1.5 MFLOP a
transaction) and that overhead dominates (~80 us a transaction at batch 1,024 on one core).
`FastFraudForward` computes the same logits in ~40 (benchmarks/fraud_scorer_speed.py; about half of
it the matmuls at the fp32 peak of the core, the rest elementwise and routing ops) with:

* every norm's weight folded into the matrix that reads the normed vector (input norms into the
  q/kv/shared/router/expert weights, the kv latent norm into the absorbed query and output maps, the
  final norm into the head), the attention scaling into the query rows;
* MLA attention in its absorbed form for EVERY layer: each head's query is mapped into the 32-wide
  latent space (q_nope @ W_uk folded into the q weight) and each head's value map folded into o_proj,
  so all heads share one key tensor [latent | k_rope] per token. Scores and values are then one
  batched matmul each over [T x heads] query rows (no per-head keys or values are ever
  materialised, no kv up-projection);
* the rope as two column blocks of the projection (the Mp/Mq images) and a multiply-add;
* one matmul for q + kv per layer (the last layer: kv for all tokens, q for the current token
  only), one for the shared expert's gate+up and the router together;
* the last layer's attention and MLP for the current transaction's token only;
* routed experts by sorting the (token, expert) pairs once, one matmul per expert into one buffer,
  one activation over all of it, and the weighted rows added back per token (`index_add_`);
* a large batch in passes of `CHUNK` transactions, so the activations stay in cache.

Everything is derived from the model at construction (the backbone's `DeepseekV3Config` and the
weights of its modules, the embedding through `FraudModel.embed`): a checkpoint with other input
fields, widths, depths, head or expert counts runs unchanged. It is read-only over the weights
(rebuild it after loading new ones). tests/test_fraud_fast_forward.py holds its logits to the
reference forward's within 1e-4 (the folds reorder float32 arithmetic: observed ~1e-6).

Tried and not kept (README, "Stream performance"): torch.compile (no faster, ~25 s to compile at
start-up), bf16 weights and activations (no faster here, probabilities off by up to ~0.02), torch's
dynamic int8 (slower, off by ~0.03), ONNX Runtime on the first layer's dense part (no faster than torch). Most of what the stream attributed to this forward was page
faults on its activations: pipelines/allocator.py.

`from_embeds` stays differentiable (reasons run gradient x input through it): with autograd on,
the routed experts take an out-of-place path (the inference path writes matmuls into buffers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


#: Transactions per pass: a pass's activations (~16 tokens x width 64 x 4 B each) then stay in the
#: core's L2 through the elementwise ops. Measured on one core at batch 1,024 (thread CPU time).
CHUNK = 256


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
    # rows per head: [latent-space query (r) | rope part @ Mp (rd) | rope part @ Mq (rd)], scaled; then,
    # when `fused` (no q low-rank path), the kv rows [latent (r) | k_rope @ Mp | k_rope @ Mq]
    w_q: torch.Tensor
    w_kv: torch.Tensor  # kv rows alone (the last layer reads them for all tokens, q for one)
    b_kv: torch.Tensor | None
    w_in: torch.Tensor | None  # cat(w_q, w_kv) when there is no q low-rank path
    b_in: torch.Tensor | None
    q_lora: Any  # (q_a weight, q_a bias) with the input norm folded; the q_a norm is folded into w_q
    w_o: torch.Tensor  # [H, heads * r]: each head's value map (and the latent norm) folded into o_proj
    b_o: torch.Tensor | None
    mlp: dict[str, Any]  # "gate_up_router" (shared gate, up, then router rows), "down", inter; moe: + router fields


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
        self.head_w = (model.head.weight * bb.norm.weight).detach().contiguous()
        self.head_b = model.head.bias.detach()
        self.layers = [self._layer(layer) for layer in bb.layers]
        self._rope: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _q_rows(self, w: torch.Tensor, kv_ln: torch.Tensor, w_uk: torch.Tensor) -> torch.Tensor:
        """Per head: the nope rows absorbed into the latent space (W_uk^T, the latent norm's weight), then
        the rope rows @ Mp and @ Mq; all scaled by the attention scaling. w [heads*(nope+rd), in]."""
        per_head = w.view(self.nh, self.nope + self.rd, -1)
        lat = kv_ln[None, :, None] * torch.matmul(w_uk.transpose(1, 2), per_head[:, :self.nope])  # [nh, r, in]
        rope = per_head[:, self.nope:]
        rows = torch.cat([lat, self.mp.T @ rope, self.mq.T @ rope], 1)  # [nh, r + 2 rd, in]
        return (rows * self.scaling).reshape(-1, w.shape[-1]).contiguous()

    def _layer(self, layer: Any) -> _Layer:
        a = layer.self_attn
        d = lambda t: None if t is None else t.detach()  # noqa: E731
        ln1, ln2 = layer.input_layernorm.weight.detach(), layer.post_attention_layernorm.weight.detach()
        kv_ln = a.kv_a_layernorm.weight.detach()
        kv_w, kv_b = a.kv_a_proj_with_mqa.weight.detach(), d(a.kv_a_proj_with_mqa.bias)
        k_rope = kv_w[self.r:]
        w_kv = torch.cat([kv_w[:self.r], self.mp.T @ k_rope, self.mq.T @ k_rope]) * ln1
        b_kv = None if kv_b is None else torch.cat([kv_b[:self.r], self.mp.T @ kv_b[self.r:], self.mq.T @ kv_b[self.r:]])
        kvb = a.kv_b_proj.weight.detach().view(self.nh, self.nope + self.vd, self.r)
        w_uk, w_uv = kvb[:, :self.nope], kvb[:, self.nope:]  # [nh, nope, r], [nh, vd, r]
        if a.q_proj is not None:
            w_q, q_lora = self._q_rows(a.q_proj.weight.detach(), kv_ln, w_uk) * ln1, None
        else:
            w_q = self._q_rows(a.q_b_proj.weight.detach() * a.q_a_layernorm.weight.detach(), kv_ln, w_uk)
            q_lora = ((a.q_a_proj.weight.detach() * ln1).contiguous(), d(a.q_a_proj.bias))
        w_in = b_in = None
        if q_lora is None:
            w_in = torch.cat([w_q, w_kv]).contiguous()
            if b_kv is not None:
                b_in = torch.cat([b_kv.new_zeros(w_q.shape[0]), b_kv])
        # o_proj over the heads' latent contexts: block h = W_o[:, head h] @ W_uv[h] @ diag(kv_ln)
        w_o_heads = a.o_proj.weight.detach().view(-1, self.nh, self.vd).transpose(0, 1)  # [nh, H, vd]
        w_o = (torch.matmul(w_o_heads, w_uv) * kv_ln).transpose(0, 1).reshape(-1, self.nh * self.r).contiguous()
        mlp = layer.mlp
        if hasattr(mlp, "experts"):
            g, sh = mlp.gate, mlp.shared_experts
            gate_up, down = mlp.experts.gate_up_proj.detach(), mlp.experts.down_proj.detach()
            out = {"moe": True, "bias": g.e_score_correction_bias.detach().float(),
                   "top_k": g.top_k, "groups": g.num_group, "topk_group": g.topk_group, "norm": g.norm_topk_prob,
                   "scale": g.routed_scaling_factor, "n_experts": g.num_experts, "inter": sh.gate_proj.weight.shape[0],
                   "gate_up_router": (torch.cat([sh.gate_proj.weight, sh.up_proj.weight, g.weight.to(sh.up_proj.weight.dtype)])
                                      * ln2).detach().contiguous(),
                   "down": sh.down_proj.weight.detach(),
                   "experts_gate_up": gate_up * ln2, "experts_down": down,  # [E, 2I, H], [E, H, I]
                   # transposed copies for torch.mm(x, w, out=...) on the inference path
                   "experts_gate_up_t": (gate_up * ln2).transpose(1, 2).contiguous(),
                   "experts_down_t": down.transpose(1, 2).contiguous()}
        else:
            out = {"moe": False, "inter": mlp.gate_proj.weight.shape[0],
                   "gate_up_router": (torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]) * ln2).detach().contiguous(),
                   "down": mlp.down_proj.weight.detach()}
        return _Layer(w_q, w_kv.contiguous(), b_kv, w_in, b_in, q_lora, w_o, d(a.o_proj.bias), out)

    def rope(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Full-width cos/sin [T, rd] from the model's own rotary table, and the causal mask
        [T * heads, T] (query row t * heads + head sees keys <= t)."""
        T = h.shape[1]
        if T not in self._rope:
            with torch.inference_mode(False), torch.no_grad():  # constants autograd may save: plain tensors
                probe = torch.zeros(1, T, 1, dtype=h.dtype)
                cos, sin = self.model.backbone.rotary_emb(probe, torch.arange(T)[None])
                mask = torch.full((T, T), float("-inf")).triu(1).repeat_interleave(self.nh, 0)
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

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        """RMS norm without weight (folded into the next matrix). Written out: `F.rms_norm` on CPU is a
        composite with dtype round trips, ~20 us a call on a 1-transaction batch against ~5."""
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def from_embeds(self, h: torch.Tensor) -> torch.Tensor:
        """Logits [B] from token embeddings [B, T, H] (`FraudModel.forward_embeds`); differentiable in
        `h` outside inference mode, which is how reasons (gradient x input) use it."""
        cos, sin, mask = self.rope(h)
        for layer in self.layers[:-1]:
            h = h + self._attention_all(layer, self._norm(h), cos, sin, mask)
            h = h + self._mlp(layer, self._norm(h))
        last = self.layers[-1]
        x = h[:, -1] + self._attention_last(last, self._norm(h), cos, sin)
        x = x + self._mlp(last, self._norm(x))
        return F.linear(self._norm(x), self.head_w, self.head_b).squeeze(-1)

    # -- attention ---------------------------------------------------------------------------------
    def _rotate(self, y: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """[..., r + 2 rd] (latent part, rope @ Mp, rope @ Mq) -> [..., r + rd] with the rope applied."""
        r, rd = self.r, self.rd
        return torch.cat([y[..., :r], y[..., r:r + rd] * cos + y[..., r + rd:] * sin], -1)

    def _project_q(self, layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        if layer.q_lora is not None:
            qa_w, qa_b = layer.q_lora
            x = self._norm(F.linear(x, qa_w, qa_b))
        return F.linear(x, layer.w_q)

    def _latent_keys(self, y: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """kv rows [B, T, r + 2 rd] -> keys shared by every head [B, T, r + rd]: normed latent, rotated k_rope."""
        r, rd = self.r, self.rd
        return torch.cat([self._norm(y[..., :r]), y[..., r:r + rd] * cos + y[..., r + rd:] * sin], -1)

    def _attention_all(self, layer: _Layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        nq = self.nh * (self.r + 2 * self.rd)
        if layer.w_in is not None:
            y = F.linear(x, layer.w_in, layer.b_in)
            q, kv = y[..., :nq], y[..., nq:]
        else:
            q, kv = self._project_q(layer, x), F.linear(x, layer.w_kv, layer.b_kv)
        keys = self._latent_keys(kv, cos, sin)  # [B, T, r + rd]
        q = self._rotate(q.view(B, T, self.nh, -1), cos[:, None], sin[:, None]).view(B, T * self.nh, -1)
        p = torch.softmax(torch.baddbmm(mask, q, keys.transpose(1, 2)), -1)  # [B, T*nh, T]
        ctx = torch.bmm(p, keys[..., :self.r])  # [B, T*nh, r] = [B, T, nh*r]
        return F.linear(ctx.view(B, T, self.nh * self.r), layer.w_o, layer.b_o)

    def _attention_last(self, layer: _Layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """The last token's attention over all tokens (it sees every one) [B, H]."""
        B = x.shape[0]
        keys = self._latent_keys(F.linear(x, layer.w_kv, layer.b_kv), cos, sin)
        q = self._rotate(self._project_q(layer, x[:, -1]).view(B, self.nh, -1), cos[-1], sin[-1])  # [B, nh, r+rd]
        p = torch.softmax(torch.bmm(q, keys.transpose(1, 2)), -1)  # [B, nh, T]
        ctx = torch.bmm(p, keys[..., :self.r])  # [B, nh, r]
        return F.linear(ctx.reshape(B, self.nh * self.r), layer.w_o, layer.b_o)

    # -- feed-forward ------------------------------------------------------------------------------
    def _mlp(self, layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        m = layer.mlp
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        i = m["inter"]
        y = F.linear(x, m["gate_up_router"])
        out = F.linear(self.act(y[:, :i]) * y[:, i:2 * i], m["down"])
        if m["moe"]:
            out = self._routed(m, x, y[:, 2 * i:], out)
        return out.view(shape)

    def _routed(self, m: dict[str, Any], x: torch.Tensor, logits: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """`out` + the routed experts: DeepseekV3TopkRouter's choice (sigmoid scores, correction bias,
        group-limited top-k) and the chosen experts' weighted sum; each expert runs once over its tokens."""
        scores = logits.float().sigmoid()
        choice = scores + m["bias"]
        E, G, k = m["n_experts"], m["groups"], m["top_k"]
        if G > 1:
            group_scores = choice.view(-1, G, E // G).topk(2, dim=-1)[0].sum(-1)
            keep = torch.zeros_like(group_scores).scatter_(1, group_scores.topk(m["topk_group"], dim=-1)[1], 1)
            choice = choice.masked_fill(~keep.bool().repeat_interleave(E // G, dim=1), float("-inf"))
        idx = choice.topk(k, dim=-1, sorted=False)[1]
        w = scores.gather(1, idx)
        if m["norm"]:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        w = (w * m["scale"]).to(x.dtype)
        flat = idx.reshape(-1)
        order = torch.argsort(flat, stable=True)
        token = order // k
        counts = torch.bincount(flat, minlength=E).tolist()
        xs = x.index_select(0, token)
        ws = w.reshape(-1).index_select(0, order)[:, None]
        if torch.is_grad_enabled() and (x.requires_grad or out.requires_grad):
            return self._routed_autograd(m, xs, ws, token, counts, out)
        inter = m["experts_down_t"].shape[1]
        gu = xs.new_empty(len(xs), 2 * inter)
        ys = xs.new_empty(xs.shape)
        start = 0
        for e, n in enumerate(counts):
            if n:
                torch.mm(xs[start:start + n], m["experts_gate_up_t"][e], out=gu[start:start + n])
            start += n
        act = self.act(gu[:, :inter]) * gu[:, inter:]
        start = 0
        for e, n in enumerate(counts):
            if n:
                torch.mm(act[start:start + n], m["experts_down_t"][e], out=ys[start:start + n])
            start += n
        return out.index_add_(0, token, ys.mul_(ws))

    def _routed_autograd(self, m: dict[str, Any], xs: torch.Tensor, ws: torch.Tensor, token: torch.Tensor,
                         counts: list[int], out: torch.Tensor) -> torch.Tensor:
        """The same sum, out of place (differentiable)."""
        parts, start = [], 0
        for e, n in enumerate(counts):
            if n:
                g, u = F.linear(xs[start:start + n], m["experts_gate_up"][e]).chunk(2, dim=-1)
                parts.append(F.linear(self.act(g) * u, m["experts_down"][e]))
            start += n
        return out.index_add(0, token, torch.cat(parts) * ws)


def _act(name: str):
    from transformers.activations import ACT2FN

    return ACT2FN[name]
