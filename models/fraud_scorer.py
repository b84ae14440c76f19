"""The fraud scorer: a transaction's context as a short token sequence through DeepseekV3Model.

Tokens: the customer's last N events, the terminal's last M events, then the current transaction
(last, so a causal model lets it attend to all of them). Each token is embedded FIELD-WISE: the
numeric fields through one linear map (= a sum of per-field vectors x_f * w_f, which is what makes
gradient x input attribution per field cheap), the label state, hashed ids and the token type
through embedding tables. The sum goes in as `inputs_embeds` to transformers' native
`DeepseekV3Model` (MLA attention, 1 shared + 8 routed experts, top-2); a linear head on the last
token gives the fraud logit.

Inference skips work the answer does not need: the last decoder layer runs its attention for all
tokens (keys/values) but its MoE only for the current transaction's token. The result is identical
to the full forward (tested), about a third cheaper.

Reasons (`pipelines.contracts.Reason`) come from gradient x input over the embedded fields and
history events, computed only for transactions at or above the review threshold.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import nn
from transformers import DeepseekV3Config, DeepseekV3Model

from models.fraud_fast_forward import FastFraudForward
from models.fraud_reviews import REVIEW_FIELDS
from models.fraud_spend import SPEND_FIELDS
from models.fraud_state import (CURRENT_FIELDS, HIST_FIELDS, ID_BUCKETS, LABEL_FRAUD, LABEL_LEGIT, FraudContext,
                                FraudState, TxColumns)

if TYPE_CHECKING:
    from pipelines.contracts import FraudScore, Transaction

SHIPPED_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "fraud-small"
TOKEN_CUSTOMER, TOKEN_TERMINAL, TOKEN_CURRENT = 0, 1, 2

# The fraud model's width: the `small` family shape (MLA, 8 routed experts top-2 + 1 shared) made
# narrow and shallow so one CPU core scores >= 15k tx/s at batch 512 (benchmarks/fraud_scorer_speed.py).
FRAUD_OVERRIDES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=2, kv_lora_rank=16, qk_rope_head_dim=8,
                 qk_nope_head_dim=8, v_head_dim=8),
    "small": dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=32, qk_rope_head_dim=8,
                  qk_nope_head_dim=16, v_head_dim=16),
}


@dataclass
class FraudModelConfig:
    preset: str = "small"
    customer_history: int = 8
    terminal_history: int = 7
    labels_delay_days: float = 7.0
    backbone: dict[str, Any] = field(default_factory=dict)  # DeepseekV3Config.to_dict()
    hist_fields: list[str] = field(default_factory=lambda: list(HIST_FIELDS))
    current_fields: list[str] = field(default_factory=lambda: list(CURRENT_FIELDS))
    use_ids: bool = False  # hashed customer/terminal id embeddings (they can memorise keys of the training weeks)
    # investigators' dispositions (FraudContext.review_num) on the current token; empty: not read (checkpoints
    # from before the review loop load and score exactly as before)
    review_fields: list[str] = field(default_factory=list)
    # the state's terminal windows count a label only once event time + delay has passed (FraudState.strict_windows)
    strict_windows: bool = False
    # the customer's usual amount (FraudContext.spend_num, models/fraud_spend.py) on the current token; empty: the
    # state keeps no spend memory and the model reads none
    spend_fields: list[str] = field(default_factory=list)

    @classmethod
    def from_preset(cls, preset: str, customer_history: int = 8, terminal_history: int = 7,
                    labels_delay_days: float = 7.0, use_ids: bool = False, reviews: bool = False,
                    spend: bool = False, **overrides: Any) -> "FraudModelConfig":
        from models.presets import UnknownPresetError, preset_config

        from models.errors import ModelError

        try:
            cfg = preset_config(preset, **{
                **FRAUD_OVERRIDES.get(preset, {}),
                "vocab_size": 1,  # tokens come in as inputs_embeds; the token table is unused
                # no text, so no special tokens (the presets' ids would not fit the 1-token vocabulary)
                "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
                "max_position_embeddings": 64,
                "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
                **overrides,
            })
        except UnknownPresetError as exc:
            raise ModelError(str(exc)) from None
        return cls(preset, customer_history, terminal_history, labels_delay_days, backbone=cfg.to_dict(), use_ids=use_ids,
                   review_fields=list(REVIEW_FIELDS) if reviews else [], strict_windows=reviews,
                   spend_fields=list(SPEND_FIELDS) if spend else [])

    def backbone_config(self) -> DeepseekV3Config:
        cfg = dict(self.backbone)
        cfg.pop("model_type", None)
        cfg.pop("transformers_version", None)
        # older checkpoints carry the preset's text token ids, outside the 1-token vocabulary
        # (transformers warns about it on every load): a scorer has no special tokens
        cfg.update(bos_token_id=None, eos_token_id=None, pad_token_id=None)
        out = DeepseekV3Config(**cfg)
        out._attn_implementation = "sdpa"  # causal via is_causal, no mask tensor
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FraudModel(nn.Module):
    """Field-wise token embedding -> DeepseekV3Model -> logit of the current transaction."""

    def __init__(self, config: FraudModelConfig):
        super().__init__()
        self.config = config
        bb = config.backbone_config()
        h = bb.hidden_size
        self.hist_num = nn.Linear(len(config.hist_fields), h)
        self.cur_num = nn.Linear(len(config.current_fields), h)
        if config.review_fields:
            if list(config.review_fields) != list(REVIEW_FIELDS):
                from models.errors import ModelError

                raise ModelError(f"checkpoint review fields {config.review_fields} are not this state's {list(REVIEW_FIELDS)}")
            self.review_num = nn.Linear(len(config.review_fields), h)
            self.hist_review = nn.Embedding(3, h)  # the verdict on each history event: none / fraud / legit
        if config.spend_fields:
            if list(config.spend_fields) != list(SPEND_FIELDS):
                from models.errors import ModelError

                raise ModelError(f"checkpoint spend fields {config.spend_fields} are not this state's {list(SPEND_FIELDS)}")
            self.spend_num = nn.Linear(len(config.spend_fields), h)
        self.label = nn.Embedding(4, h)
        self.customer_id = nn.Embedding(ID_BUCKETS, h)
        self.terminal_id = nn.Embedding(ID_BUCKETS, h)
        self.token_type = nn.Embedding(3, h)
        self.backbone = DeepseekV3Model(bb)
        self.head = nn.Linear(h, 1)
        n, m = config.customer_history, config.terminal_history
        self.register_buffer("types", torch.tensor([TOKEN_CUSTOMER] * n + [TOKEN_TERMINAL] * m + [TOKEN_CURRENT]),
                             persistent=False)
        self.register_buffer("hist_is_customer", torch.tensor([True] * n + [False] * m), persistent=False)
        with torch.no_grad():  # small id tables: ids are a weak, memorising signal
            self.customer_id.weight.mul_(0.1)
            self.terminal_id.weight.mul_(0.1)

    # -- embedding ---------------------------------------------------------------------------------
    def embed_parts(self, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The embedding split into additive parts (history and current), each [B, tokens, (fields,) H]."""
        cp = t["hist_counterpart"]
        if self.config.use_ids:
            # customer history events point at terminals, terminal history at customers
            cp_emb = torch.where(self.hist_is_customer[None, :, None], self.terminal_id(cp), self.customer_id(cp))
            cur_id = (self.customer_id(t["cur_ids"][:, 0]) + self.terminal_id(t["cur_ids"][:, 1])).unsqueeze(1)
        else:  # ids off: zero parts of the same shapes, without the four table lookups (~15% of a forward)
            h = self.customer_id.embedding_dim
            cp_emb = self.customer_id.weight.new_zeros((*cp.shape, h))
            cur_id = self.customer_id.weight.new_zeros((cp.shape[0], 1, h))
        return {
            "hist_num": self.hist_num(t["hist_num"]),
            "hist_label": self.label(t["hist_label"]) + (self.hist_review(t["hist_review"])
                                                         if self.config.review_fields else 0),
            "hist_id": cp_emb,
            "cur_num": self.current_num(t).unsqueeze(1),
            "cur_id": cur_id,
        }

    def current_extras(self) -> list[tuple[str, nn.Linear]]:
        """(context field, its embedding) of the current-token inputs beside `cur_num` that the config turns on:
        the review fields, then the spend fields."""
        return [(key, getattr(self, key)) for key, on in (("review_num", self.config.review_fields),
                                                            ("spend_num", self.config.spend_fields)) if on]

    def current_num(self, t: dict[str, torch.Tensor]) -> torch.Tensor:
        """The current transaction's numeric fields embedded (with the review and spend fields when the config has
        them)."""
        x = self.cur_num(t["cur_num"])
        for key, linear in self.current_extras():
            x = x + linear(t[key])
        return x

    def embed(self, t: dict[str, torch.Tensor]) -> torch.Tensor:
        p = self.embed_parts(t)
        hist = p["hist_num"] + p["hist_label"] + p["hist_id"]
        cur = p["cur_num"] + p["cur_id"]
        return torch.cat([hist, cur], 1) + self.token_type(self.types)[None]

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, t: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits [B] through the full native forward (training, gradients, explanations)."""
        out = self.backbone(inputs_embeds=self.embed(t)).last_hidden_state
        return self.head(out[:, -1]).squeeze(-1)

    def forward_embeds(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(inputs_embeds=x).last_hidden_state[:, -1]).squeeze(-1)

    def fast_logits(self, t: dict[str, torch.Tensor]) -> torch.Tensor:
        """Same logits as `forward`, skipping the last layer's MoE/residual for all but the last token."""
        bb = self.backbone
        h = self.embed(t)
        pos = torch.arange(h.shape[1], device=h.device)[None]
        pe = bb.rotary_emb(h, pos)
        for layer in bb.layers[:-1]:
            h = layer(h, attention_mask=None, position_ids=pos, position_embeddings=pe)
        last = bb.layers[-1]
        attn, _ = last.self_attn(hidden_states=last.input_layernorm(h), position_embeddings=pe, attention_mask=None)
        x = h[:, -1:] + attn[:, -1:]
        x = x + last.mlp(last.post_attention_layernorm(x))
        return self.head(bb.norm(x)[:, -1]).squeeze(-1)


def context_tensors(ctx: FraudContext, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(getattr(ctx, k))).to(device)
            for k in ("hist_num", "hist_label", "hist_counterpart", "cur_num", "cur_ids", "review_num", "hist_review",
                      "spend_num")}


def explain(model: FraudModel, t: dict[str, torch.Tensor], top_k: int = 5,
            forward: Any = None) -> list[list[tuple[str, str, int, float]]]:
    """Gradient x input per current-transaction field and per history event, top_k by |weight| per row.

    Returns rows of (source, feature, history index or -1, weight); weight > 0 pushes towards fraud.
    `forward`: embeddings -> logits, differentiable in its input (default `model.forward_embeds`; the
    scorer passes its fused CPU forward, the same function in fewer ops).
    """
    with torch.enable_grad():
        x = {k: v.detach() for k, v in t.items()}
        num_h = x["hist_num"].unsqueeze(-1) * model.hist_num.weight.T[None, None]  # [B, T, F, H]
        cur_x, cur_w, cur_b = x["cur_num"], model.cur_num.weight.T, model.cur_num.bias
        for key, linear in model.current_extras():  # the review and spend fields are more current fields
            cur_x = torch.cat([cur_x, x[key]], -1)
            cur_w = torch.cat([cur_w, linear.weight.T], 0)
            cur_b = cur_b + linear.bias
        num_c = cur_x.unsqueeze(-1) * cur_w[None]  # [B, F, H]
        p = model.embed_parts(x)
        leaves = {"num_h": num_h.detach().requires_grad_(), "num_c": num_c.detach().requires_grad_(),
                  "label": p["hist_label"].detach().requires_grad_(), "hid": p["hist_id"].detach().requires_grad_(),
                  "cid": p["cur_id"].detach().requires_grad_()}
        hist = leaves["num_h"].sum(2) + model.hist_num.bias + leaves["label"] + leaves["hid"]
        cur = leaves["num_c"].sum(1, keepdim=True) + cur_b + leaves["cid"]
        emb = torch.cat([hist, cur], 1) + model.token_type(model.types)[None]
        (forward or model.forward_embeds)(emb).sum().backward()
        attr = {k: (v * v.grad).sum(-1).detach() for k, v in leaves.items()}
    cur_fields = list(model.config.current_fields) + list(model.config.review_fields) + list(model.config.spend_fields)
    n = model.config.customer_history
    out = []
    for b in range(attr["num_c"].shape[0]):
        items = [("current", f, -1, float(w)) for f, w in zip(cur_fields, attr["num_c"][b].tolist())]
        items.append(("current", "customer_and_terminal_id", -1, float(attr["cid"][b, 0])))
        event_w = (attr["num_h"][b].sum(-1) + attr["label"][b] + attr["hid"][b]).tolist()
        for i, w in enumerate(event_w):
            items.append(("customer_history" if i < n else "terminal_history", "event", i, float(w)))
        items.sort(key=lambda r: -abs(r[3]))
        out.append(items[:top_k])
    return out


class FraudScorer:
    """Loads a fraud checkpoint and scores batches of transactions against a `FraudState`."""

    def __init__(self, model: FraudModel, model_version: str, device: str = "cpu", metrics: dict | None = None,
                 backend: str | None = None):
        self.model = model.eval().to(device)
        self._explain_model: FraudModel | None = None
        self.model_version = model_version
        self.device = device
        self.metrics = metrics or {}
        # "engine" (CUDA default): the fixed-length forward replayed from CUDA graphs per batch bucket
        from models.engine_backend import ENGINE, FraudGraphs, select_backend

        self.backend = select_backend(backend, device, None, "fraud scorer")
        self._graphs = FraudGraphs(self.model) if self.backend == ENGINE else None
        self._fast: tuple[tuple[int, int], FastFraudForward] | None = None  # (weights' fingerprint, forward)
        self._params: tuple[FraudModel, list[torch.Tensor]] | None = None  # (model, its parameters)

    @property
    def config(self) -> FraudModelConfig:
        return self.model.config

    def new_state(self, **kwargs: Any) -> FraudState:
        cfg = self.config
        return FraudState(kwargs.pop("customer_history", cfg.customer_history),
                          kwargs.pop("terminal_history", cfg.terminal_history),
                          kwargs.pop("labels_delay_days", cfg.labels_delay_days),
                          **({"strict_windows": cfg.strict_windows, "spend_memory": bool(cfg.spend_fields)} | kwargs))

    @classmethod
    def load(cls, path: Path | None = None, device: str = "cpu", quantize: bool = False,
             threads: int | None = None, backend: str | None = None) -> "FraudScorer":
        """A checkpoint dir; None -> the shipped `models/checkpoints/fraud-small`, or tiny random weights if absent."""
        from models.checkpoint import load_task_model

        if threads:
            torch.set_num_threads(threads)
        if path is None and not (SHIPPED_CHECKPOINT / "config.json").exists():
            torch.manual_seed(0)
            model = FraudModel(FraudModelConfig.from_preset("tiny"))
            scorer = cls(model, "fraud-tiny-random-untrained", device, backend=backend)
        else:
            ckpt = load_task_model(Path(path) if path is not None else SHIPPED_CHECKPOINT, task="fraud")
            model = FraudModel(FraudModelConfig(**ckpt.config["fraud"]))
            model.load_state_dict({k: v.float() for k, v in ckpt.state_dict.items()}, strict=True)
            scorer = cls(model, ckpt.config.get("model_version", "fraud-unknown"), device, ckpt.config.get("metrics"),
                         backend=backend)
        if quantize:
            scorer.quantize()
        return scorer

    def quantize(self) -> "FraudScorer":
        """int8 dynamic quantisation of the Linear layers (CPU serving); experts are 3-D tensors and stay fp32."""
        import copy

        from torch.ao.quantization import quantize_dynamic

        # explanations need gradients, which quantised Linear layers do not give: keep an fp32 copy for them
        self._explain_model = copy.deepcopy(self.model).cpu()
        self.model.cpu()
        self.model.backbone = quantize_dynamic(self.model.backbone, {nn.Linear}, dtype=torch.qint8)
        self.device = "cpu"
        self.model_version += "+int8"
        self.backend, self._graphs = "transformers", None  # quantised Linear layers: the plain path only
        return self

    # -- scoring -----------------------------------------------------------------------------------
    def cpu_forward(self) -> FastFraudForward | None:
        """The fused CPU forward over the current weights (rebuilt when the model object or any of its
        parameters changed: a hot swap or an in-place load); None where it does not apply (CUDA, int8)."""
        if self._graphs is not None or self._explain_model is not None or torch.device(self.device).type != "cpu":
            return None
        model = self.model
        if self._params is None or self._params[0] is not model:  # walking the module tree costs ~ms: once per model
            self._params = (model, list(model.parameters()))
        key = (id(model), sum(p._version for p in self._params[1]))
        if self._fast is None or self._fast[0] != key:
            self._fast = (key, FastFraudForward(model))
        return self._fast[1]

    def probabilities(self, ctx: FraudContext) -> np.ndarray:
        with torch.inference_mode():
            t = context_tensors(ctx, self.device)
            if self._graphs is not None:
                logits = self._graphs.logits(t)
            else:
                fast = self.cpu_forward()
                logits = fast.logits(t) if fast is not None else self.model.fast_logits(t)
        return torch.sigmoid(logits.float()).cpu().numpy()

    def score_frame(self, frame: Any, state: FraudState, batch_size: int = 4096) -> np.ndarray:
        """Columnar fast path (replay/evaluation): scores in row order, advancing the state as it goes.

        `frame`: a TxColumns, or a polars/pandas frame with transaction_id, timestamp (datetime or epoch
        seconds), customer_id, terminal_id, amount columns.
        """
        cols = frame if isinstance(frame, TxColumns) else columns_from_frame(frame)
        out = np.empty(len(cols), np.float32)
        for s in range(0, len(cols), batch_size):
            idx = np.arange(s, min(s + batch_size, len(cols)))
            out[idx] = self.probabilities(state.advance_columns(cols.take(idx)))
        return out

    def score(self, transactions: Sequence["Transaction"], state: FraudState, alert_threshold: float = 0.5,
              review_threshold: float = 0.2, explain_top_k: int = 5) -> list["FraudScore"]:
        """Score a micro-batch in one forward, then advance the state with it. Reasons for review/alert rows."""
        from pipelines.contracts import Decision, FraudScore, Reason

        if not transactions:
            return []
        return self.score_context(transactions, state.advance_batch(transactions), alert_threshold, review_threshold,
                                  explain_top_k)

    def score_context(self, transactions: Sequence["Transaction"], ctx: FraudContext, alert_threshold: float = 0.5,
                      review_threshold: float = 0.2, explain_top_k: int = 5) -> list["FraudScore"]:
        """Score transactions whose context is already read (no state change): a failure here can be
        retried on any subset of rows (`ctx.take`) without touching the state."""
        from pipelines.contracts import FraudScore, Reason

        probs, decisions, reasons = self.score_columns(ctx, alert_threshold, review_threshold, explain_top_k)
        return [FraudScore(transaction_id=tx.transaction_id, score=p, decision=d,
                           reasons=[Reason(**r) for r in reasons.get(i, ())], model_version=self.model_version)
                for i, (tx, p, d) in enumerate(zip(transactions, probs, decisions, strict=True))]

    def score_columns(self, ctx: FraudContext, alert_threshold: float = 0.5, review_threshold: float = 0.2,
                      explain_top_k: int = 5) -> tuple[list[float], list[str], dict[int, list[dict[str, Any]]]]:
        """`score_context` without a contract object per row (the stream's path): scores in [0, 1],
        decisions (`Decision` values), and for each row at or above the review threshold its reasons
        as `Reason` fields (source, feature, weight, detail). Same numbers as `score_context`."""
        probs = self.probabilities(ctx)
        flagged = np.nonzero(probs >= review_threshold)[0]
        reasons: dict[int, list[dict[str, Any]]] = {}
        if len(flagged) and explain_top_k > 0:
            sub = ctx.take(flagged)
            fast = self.cpu_forward()
            ranked = explain(self._explain_model or self.model, context_tensors(sub, self.device), explain_top_k,
                             forward=fast.from_embeds if fast is not None else None)
            for row, items in zip(flagged.tolist(), ranked):
                reasons[row] = [{"source": src, "feature": feat if i < 0 else f"{src}[{i}]", "weight": round(w, 5),
                                 "detail": _detail(ctx, row, src, feat, i)} for src, feat, i, w in items]
        values = probs.tolist()
        decisions = ["decline" if p >= alert_threshold else ("review" if p >= review_threshold else "approve")
                     for p in values]
        return [min(max(p, 0.0), 1.0) for p in values], decisions, reasons


def _detail(ctx: FraudContext, row: int, source: str, feature: str, i: int) -> str:
    if i < 0:
        if feature in CURRENT_FIELDS:
            return f"{feature}={float(ctx.cur_num[row, CURRENT_FIELDS.index(feature)]):.3f} (scaled)"
        if feature in REVIEW_FIELDS:
            return f"{feature}={float(ctx.review_num[row, REVIEW_FIELDS.index(feature)]):.3f} (scaled)"
        if feature in SPEND_FIELDS:
            return f"{feature}={float(ctx.spend_num[row, SPEND_FIELDS.index(feature)]):.3f} (scaled)"
        return "hashed customer/terminal ids"
    label = {LABEL_FRAUD: "known fraud", LABEL_LEGIT: "known legit"}.get(int(ctx.hist_label[row, i]), "no label yet")
    label += {1: ", reviewed: fraud", 2: ", reviewed: legitimate"}.get(int(ctx.hist_review[row, i]), "")
    if int(ctx.hist_label[row, i]) == 0:
        return "no event (empty history slot)"
    return f"amount {float(ctx.hist_amount[row, i]):.2f}, {float(ctx.hist_age_s[row, i]) / 86400:.1f} days before, {label}"


def columns_from_frame(frame: Any) -> TxColumns:
    """TxColumns from a polars or pandas frame (Argus names or the handbook's upper-case names)."""
    import pandas as pd

    df = frame.to_pandas() if hasattr(frame, "to_pandas") else frame
    names = {"TRANSACTION_ID": "transaction_id", "TX_DATETIME": "timestamp", "CUSTOMER_ID": "customer_id",
             "TERMINAL_ID": "terminal_id", "TX_AMOUNT": "amount"}
    df = df.rename(columns={k: v for k, v in names.items() if k in df.columns})
    ts = df["timestamp"]
    if pd.api.types.is_numeric_dtype(ts):
        seconds = ts.to_numpy(np.float64)
    else:
        t = pd.to_datetime(ts, utc=True)
        seconds = (t - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds().to_numpy(np.float64)
    return TxColumns(df["transaction_id"].astype(str).tolist(), seconds, df["customer_id"].astype(str).tolist(),
                     df["terminal_id"].astype(str).tolist(), df["amount"].to_numpy(np.float64))


def default_threads() -> int:
    """One thread per scorer by default: the stream job runs a scorer next to consumers on few cores."""
    return int(os.environ.get("ARGUS_TORCH_THREADS", "1"))
