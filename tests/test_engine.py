"""The fast inference engine against transformers' own DeepSeek implementation, on the tiny preset (CPU)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import DeepseekV3ForCausalLM

from models.engine import RequestError, load_engine
from models.engine import kernels
from models.presets import preset_config

PROMPTS = [[5, 6, 7, 8, 9], [1, 2, 3], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20], [300], [42, 43, 44, 45]]


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    return DeepseekV3ForCausalLM(preset_config("tiny")).eval()


def hf_greedy(model, prompt, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)
    return out[0, len(prompt):].tolist()


def test_greedy_tokens_match_transformers_with_requests_joining_mid_batch(hf_model):
    # 5 requests, 2 slots, different lengths: requests join as others finish (continuous batching).
    engine = load_engine(hf_model, max_batch=2, max_seq_len=64)
    lengths = [12, 5, 9, 16, 3]
    handles = [engine.submit(p, n) for p, n in zip(PROMPTS, lengths)]
    outs = [h.result() for h in handles]
    assert outs == [hf_greedy(hf_model, p, n) for p, n in zip(PROMPTS, lengths)]
    assert engine.stats["generated_tokens"] == sum(lengths)


def test_chunked_prefill_and_expert_loop_give_the_same_tokens(hf_model):
    expected = [hf_greedy(hf_model, p, 8) for p in PROMPTS]
    chunked = load_engine(hf_model, max_batch=8, max_seq_len=64, prefill_chunk=4, prefill_chunk_continued=3)
    assert chunked._chunks(11) == [(0, 4), (4, 7), (7, 10), (10, 11)]
    assert chunked.generate(PROMPTS, 8) == expected
    looped = load_engine(hf_model, max_batch=8, max_seq_len=64)
    for block in looped.model.blocks:
        if hasattr(block.mlp, "experts"):
            block.mlp.experts.use_grouped_mm = False
    assert looped.generate(PROMPTS, 8) == expected


def test_decode_logits_match_transformers(hf_model):
    engine = load_engine(hf_model, max_batch=4, max_seq_len=64)
    prompt = PROMPTS[2]
    out = engine.generate([prompt], 6)[0]
    seq = torch.tensor([prompt + out[:-1]])
    with torch.no_grad():
        ref = hf_model(seq).logits[0, -1]
    # re-run the last decode step through the runner: slot 0 still holds the sequence's rows
    logits = engine.runner.step(torch.tensor([out[-2]]), torch.tensor([seq.shape[1] - 1]), seq.shape[1])[0]
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)


def test_prefill_logits_and_hidden_match_transformers(hf_model):
    engine = load_engine(hf_model, max_batch=2, max_seq_len=64)
    seqs = [PROMPTS[2], PROMPTS[0]]
    logits = engine.prefill_logits(seqs)
    last = engine.prefill_logits(seqs, last_only=True)
    hidden = engine.prefill_hidden(seqs)
    with torch.no_grad():
        for i, s in enumerate(seqs):
            out = hf_model(torch.tensor([s]), output_hidden_states=True)
            torch.testing.assert_close(logits[i, : len(s)], out.logits[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(last[i], out.logits[0, -1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(hidden[i, : len(s)], out.hidden_states[-1][0], atol=1e-5, rtol=1e-5)


def test_streaming_handle_and_callback_see_every_token_in_order(hf_model):
    engine = load_engine(hf_model, max_batch=2, max_seq_len=64)
    seen = []
    handle = engine.submit(PROMPTS[0], 7, on_token=lambda rid, tok: seen.append((rid, tok)))
    streamed = list(handle)
    assert streamed == hf_greedy(hf_model, PROMPTS[0], 7)
    assert seen == [(handle.id, t) for t in streamed]


def test_background_scheduler_loop_serves_submissions(hf_model):
    engine = load_engine(hf_model, max_batch=2, max_seq_len=64)
    engine.start()
    try:
        handles = [engine.submit(p, 4) for p in PROMPTS[:3]]
        assert [h.result() for h in handles] == [hf_greedy(hf_model, p, 4) for p in PROMPTS[:3]]
    finally:
        engine.stop()
    assert not engine.running


def test_stop_tokens_and_top1_sampling(hf_model):
    engine = load_engine(hf_model, max_batch=2, max_seq_len=64)
    greedy = hf_greedy(hf_model, PROMPTS[1], 10)
    stopped = engine.generate([PROMPTS[1]], 10, stop_token_ids=[greedy[3]])[0]
    assert stopped == greedy[: greedy.index(greedy[3]) + 1]
    assert engine.generate([PROMPTS[1]], 10, temperature=0.7, top_k=1)[0] == greedy


def test_bad_requests_are_refused_with_a_reason(hf_model):
    engine = load_engine(hf_model, max_batch=2, max_seq_len=16)
    with pytest.raises(RequestError, match="empty"):
        engine.submit([], 4)
    with pytest.raises(RequestError, match="exceeds max_seq_len"):
        engine.submit(list(range(10)), 10)
    with pytest.raises(RequestError, match="token ids"):
        engine.submit([1, 10**6], 2)


def test_routing_kernel_matches_transformers_router(hf_model):
    gate = hf_model.model.layers[0].mlp.gate
    x = torch.randn(7, hf_model.config.hidden_size)
    _, ref_w, ref_idx = gate(x)
    cfg = hf_model.config
    w, idx = kernels.route_sigmoid_topk(torch.nn.functional.linear(x, gate.weight), gate.e_score_correction_bias,
                                        cfg.num_experts_per_tok, 1, 1, cfg.norm_topk_prob, cfg.routed_scaling_factor)
    order, ref_order = idx.sort(-1), ref_idx.sort(-1)
    assert torch.equal(order.values, ref_order.values)
    torch.testing.assert_close(w.gather(1, order.indices), ref_w.gather(1, ref_order.indices))


def test_other_model_families_fall_back_to_transformers():
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3MoeConfig(vocab_size=128, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                         num_experts=4, num_experts_per_tok=2)
    model = Qwen3MoeForCausalLM(cfg).eval()
    engine = load_engine(model, max_batch=2, max_seq_len=32)
    assert type(engine).__name__ == "TransformersEngine"
    assert engine.generate([[1, 2, 3]], 4) == [hf_greedy(model, [1, 2, 3], 4)]
    assert engine.capture_graphs() == 0.0  # the Engine's interface: nothing to capture


def test_long_context_split_of_the_attention_sum_is_exact(monkeypatch):
    from models.engine import layers

    monkeypatch.setattr(layers, "LONG_CONTEXT_SPLIT", 8)
    probs = torch.softmax(torch.randn(3, 4, 64), -1)
    latent = torch.randn(3, 80, 16)[:, :64]  # a strided prefix of a longer cache, as in decode
    torch.testing.assert_close(layers._weighted_latent(probs, latent), torch.bmm(probs, latent))


def _recorded(engine):
    """The SchedulerOutput of every step the engine runs."""
    plans, run = [], engine._execute
    engine._execute = lambda out: (plans.append(out), run(out))[1]
    return plans


def _staggered_prompts_give_transformers_tokens(engine, hf_model):
    """Submits PROMPTS one a step (each arrives while the earlier ones decode), checks every request's
    8 tokens against transformers' greedy ones, and returns the steps' SchedulerOutputs."""
    plans = _recorded(engine)
    handles = []
    for p in PROMPTS:
        handles.append(engine.submit(p, 8))
        engine.step()
    assert [h.result() for h in handles] == [hf_greedy(hf_model, p, 8) for p in PROMPTS]
    return plans


@pytest.mark.parametrize("mixed_step", [False, True])
def test_long_prefill_is_chunked_over_steps_while_running_requests_get_a_token_each_step(hf_model, mixed_step):
    engine = load_engine(hf_model, max_batch=4, max_seq_len=64, prefill_budget=4, mixed_step=mixed_step)
    plans = _recorded(engine)
    short = engine.submit(PROMPTS[0], 12)
    engine.step()  # nothing decoding: the whole prompt, first token
    assert len(short.request.output) == 1 and plans[0].prefill_tokens == 5
    long_prompt = PROMPTS[2] + PROMPTS[0]  # 16 tokens: 4 steps of 4 under the budget
    longer = engine.submit(long_prompt, 6)
    for i in range(4):
        before = len(short.request.output)
        engine.step()
        assert len(short.request.output) == before + 1  # the running request is never stalled
        plan = plans[-1]
        assert plan.decode == [short.request] and plan.prefill_tokens == 4
        assert [(p.start, p.stop) for p in plan.prefill] == [(4 * i, 4 * i + 4)]
        assert len(longer.request.output) == (1 if i == 3 else 0)
    assert max(p.prefill_tokens for p in plans[1:]) <= 4
    assert engine.stats["mixed_forwards"] == (4 if mixed_step else 0)  # each piece rode with the decode row
    assert short.result() == hf_greedy(hf_model, PROMPTS[0], 12)
    assert longer.result() == hf_greedy(hf_model, long_prompt, 6)


def test_admission_is_first_come_first_served_and_long_prompts_are_not_starved(hf_model):
    engine = load_engine(hf_model, max_batch=8, max_seq_len=64, prefill_budget=4)
    plans = _recorded(engine)
    running = engine.submit(PROMPTS[1], 20)
    engine.step()
    long_prompt = PROMPTS[2] + PROMPTS[4]  # 15 tokens, then short prompts behind it
    handles = [engine.submit(p, 3) for p in [long_prompt, PROMPTS[3], PROMPTS[1], PROMPTS[3]]]
    firsts = {}
    step = 0
    while not all(h.request.done.is_set() for h in handles):
        engine.step()
        step += 1
        for h in handles:
            if h.request.output and h.id not in firsts:
                firsts[h.id] = step
    # each step: the partly prefilled request first, then arrivals in order; nobody jumps the queue
    order = [p.request.id for plan in plans[1:] for p in plan.prefill]
    assert order == sorted(order)
    assert firsts[handles[0].id] <= min(firsts[h.id] for h in handles[1:])
    assert all(plan.prefill_tokens <= 4 for plan in plans[1:])
    assert [h.result() for h in handles] == [hf_greedy(hf_model, p, 3) for p in [long_prompt, PROMPTS[3], PROMPTS[1], PROMPTS[3]]]
    assert running.result() == hf_greedy(hf_model, PROMPTS[1], 20)


def test_serving_benchmark_dry_run(tmp_path):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import engine_serving

    out = tmp_path / "serving.json"
    engine_serving.main(["--dry-run", "--json", str(out)])
    res = json.loads(out.read_text())
    rates = res["engines"]["engine"]["rates"]
    assert set(rates) == {"20", "200"}
    for m in rates.values():
        assert m["completed"] == m["requests"] > 0
        assert m["ttft_ms"]["p99"] > 0 and m["tpot_ms"]["p50"] > 0 and m["itl_ms"]["p99"] > 0 and m["output_tok_s"] > 0
    assert res["transformers_static"]["output_tok_s"] > 0


# ---- the mixed step: decode rows and prefill pieces in one forward ---------------------------------

@st.composite
def mixed_layouts(draw):
    """A random mixed step on a 6-slot, 64-position cache: decode slots 0..n-1 (some dummies), then
    prefill pieces in distinct slots (a dummy's slot or one above n), fresh or continuing a prefix."""
    n = draw(st.integers(0, 4))
    real = [draw(st.booleans()) for _ in range(n)]
    if n:
        real[draw(st.integers(0, n - 1))] = True
    pos = [draw(st.integers(0, 40)) if r else 63 for r in real]
    free = [s for s in range(6) if s >= n or not real[s]]
    k = draw(st.integers(0 if n else 1, min(3, len(free))))
    slots = draw(st.permutations(free))[:k]
    pieces = [(slot, draw(st.sampled_from([0, 0, 1, 7, 20])), draw(st.integers(1, 12))) for slot in slots]
    return pos, pieces, draw(st.integers(0, 2**31 - 1))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=mixed_layouts())
def test_mixed_step_equals_separate_decode_and_prefill(hf_model, layout):
    """One packed forward (decode rows + prefill pieces, one expert pass) gives the logits and the
    cache rows that the decode step and each piece's prefill give when run apart."""
    from models.engine.mixed_batch import MixedBatch

    pos, pieces, seed = layout
    engine = load_engine(hf_model, max_batch=6, max_seq_len=64)
    model = engine.model
    gen = torch.Generator().manual_seed(seed)
    cache = torch.randn(engine.cache.shape, generator=gen)  # any prefix: both paths must read it alike
    vocab = model.args.vocab_size
    dec_tokens = torch.randint(0, vocab, (len(pos),), generator=gen)
    piece_tokens = [torch.randint(0, vocab, (length,), generator=gen) for _, _, length in pieces]
    dec_pos = torch.tensor(pos, dtype=torch.long)
    keys = max([p + 1 for p in pos if p != 63] or [1])

    apart = cache.clone()
    ref = []
    if pos:
        ref.append(model.decode(dec_tokens, dec_pos, apart, keys))
    for (slot, start, _), toks in zip(pieces, piece_tokens):
        ref.append(model.logits(model.prefill(toks[None], apart, torch.tensor([slot]), start)[0]))

    packed = cache.clone()
    batch = MixedBatch(len(pos), dec_pos, keys, tuple((torch.tensor([s]), st_, n) for s, st_, n in pieces))
    tokens = torch.cat([dec_tokens, *piece_tokens])
    positions = torch.cat([dec_pos, *[torch.arange(s, s + n) for _, s, n in pieces]])
    assert batch.num_tokens == tokens.numel()
    logits = model.logits(model.mixed(tokens, positions, packed, batch))

    real = [i for i, p in enumerate(pos) if p != 63]  # dummy rows' logits are never read
    expected = torch.cat(ref)
    torch.testing.assert_close(logits[real], expected[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[len(pos):], expected[len(pos):], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(packed, apart, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("budget,chunk", [(None, 32768), (3, 32768), (4, 32768), (None, 4)])
def test_mixed_steps_give_transformers_tokens_under_every_budget(hf_model, budget, chunk):
    """Requests arriving while others decode, served with mixed steps (and, with a 4-token chunk, the
    separate path for the pieces too long for one plain chunk): transformers' greedy tokens."""
    engine = load_engine(hf_model, max_batch=3, max_seq_len=64, prefill_budget=budget, mixed_step=True,
                         prefill_chunk=chunk, prefill_chunk_continued=min(chunk, 8192))
    plans = _staggered_prompts_give_transformers_tokens(engine, hf_model)
    runs_mixed = [plan for plan in plans if plan.decode and plan.prefill
                  and max(p.stop for p in plan.prefill) <= chunk and plan.prefill_tokens <= chunk]
    assert engine.stats["mixed_forwards"] == len(runs_mixed) > 0
    if chunk == 4:
        assert any(plan.decode and plan.prefill_tokens > 4 for plan in plans)  # these went the separate way


def test_occupancy_reports_the_queue_and_the_mean_decode_batch(hf_model):
    engine = load_engine(hf_model, max_batch=2, max_seq_len=64)
    idle = engine.occupancy()
    assert idle["slots"] == 2 and idle["steps"] == 0 and idle["batch_occupancy"] == 0.0
    handles = [engine.submit(p, 4) for p in PROMPTS[:3]]
    assert engine.occupancy()["waiting"] == 3
    engine.step()  # two prompts take the two slots, the third waits
    now = engine.occupancy()
    assert (now["decoding"], now["prefilling"], now["waiting"]) == (2, 0, 1)
    for h in handles:
        h.result()
    done = engine.occupancy()
    assert (done["decoding"], done["waiting"]) == (0, 0) and done["generated_tokens"] == 12
    assert done["mean_decode_batch"] == engine.stats["decode_slots"] / engine.stats["decode_steps"]
    assert 1.0 <= done["mean_decode_batch"] <= 2.0 and done["batch_occupancy"] == done["mean_decode_batch"] / 2


# ---- fused router + fused MoE (Triton on GPU; these tests run their PyTorch reference) -------------

@settings(max_examples=20, deadline=None)
@given(n_pairs=st.integers(1, 80), n_experts=st.integers(1, 12), block_m=st.sampled_from([1, 4, 16]), seed=st.integers(0, 99))
def test_moe_align_lists_every_pair_once_in_whole_blocks_of_one_expert(n_pairs, n_experts, block_m, seed):
    from models.engine.fused_moe import max_blocks, moe_align

    g = torch.Generator().manual_seed(seed)
    pair_expert = torch.randint(0, n_experts, (n_pairs,), generator=g)
    sorted_pair, block_expert = moe_align(pair_expert, n_experts, block_m)
    nb = max_blocks(n_pairs, n_experts, block_m)
    assert sorted_pair.shape == (nb * block_m,) and block_expert.shape == (nb,)
    real = sorted_pair[sorted_pair < n_pairs]
    assert sorted(real.tolist()) == list(range(n_pairs))  # every pair once, the rest is the sentinel
    assert ((sorted_pair == n_pairs) | (sorted_pair < n_pairs)).all()
    for b, e in enumerate(block_expert.tolist()):
        rows = sorted_pair[b * block_m : (b + 1) * block_m].long()
        rows = rows[rows < n_pairs]
        if e >= n_experts:
            assert rows.numel() == 0
        else:
            assert rows.numel() > 0 and (pair_expert[rows] == e).all()
    assert block_expert.tolist() == sorted(block_expert.tolist())


@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tokens=st.integers(1, 120), packed=st.booleans(), seed=st.integers(0, 99))
def test_fused_moe_equals_router_experts_and_shared_mlp(hf_model, tokens, packed, seed):
    # The fused path (pairs with the shared MLP as expert slices, aligned blocks, residual in the
    # combine) against the separate router, grouped experts and shared MLP, in float32. A packed step's
    # call takes it past FUSED_MAX_TOKENS too, in BLOCK_M_LARGE-row blocks once experts average over 16 rows.
    from models.engine import fused_moe

    engine = load_engine(hf_model, max_batch=2, max_seq_len=64)
    moe = next(b.mlp for b in engine.model.blocks if hasattr(b.mlp, "experts"))
    assert moe.weights.n_shared == hf_model.config.n_shared_experts
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hf_model.config.hidden_size, generator=g)
    residual = torch.randn(tokens, hf_model.config.hidden_size, generator=g)
    moe.fused = moe.packed_fused = False
    expected = moe(x, kernels.eager, residual=residual, packed=packed)
    moe.fused = moe.packed_fused = True
    got = moe(x, kernels.eager, residual=residual, packed=packed)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    moe.packed_block_m = 128  # an engine's packed_block_m: taller blocks, the same sums
    torch.testing.assert_close(moe(x, kernels.eager, residual=residual, packed=packed), expected, rtol=1e-5, atol=1e-5)
    moe.packed_block_m = None
    assert moe.uses_fused(tokens, packed) == (packed or tokens <= moe.FUSED_MAX_TOKENS)
    if not moe.uses_fused(tokens, packed):  # past the limit the fused flag changes nothing
        assert torch.equal(got, expected)
    pairs_per_token = hf_model.config.num_experts_per_tok + moe.weights.n_shared
    large = fused_moe.block_m_for(tokens * pairs_per_token, moe.weights.n_experts) == fused_moe.BLOCK_M_LARGE
    assert large == (tokens * pairs_per_token > fused_moe.BLOCK_M * moe.weights.n_experts)
    assert fused_moe.block_m_for(tokens * pairs_per_token, moe.weights.n_experts, 128) == (128 if large else fused_moe.BLOCK_M)
    pairs, weights = moe.route_pairs(x, kernels.eager)
    per_tok = hf_model.config.num_experts_per_tok + hf_model.config.n_shared_experts
    assert pairs.view(tokens, per_tok)[:, -1].eq(hf_model.config.n_routed_experts).all()
    assert weights.view(tokens, per_tok)[:, -1].eq(1.0).all()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 5), keys=st.integers(1, 40), seed=st.integers(0, 99))
def test_latent_attention_path_equals_the_decode_ops(hf_model, rows, keys, seed, monkeypatch):
    # The decode attention through fused_mla.latent_attention (here its PyTorch reference, as the kernel is
    # checked against it in the interpreter and on the GPU) gives the ops path's output: same cache view,
    # positions (a padding row past the bucket attends to every key) and strided query layout.
    from models.engine import fused_mla

    engine = load_engine(hf_model, max_batch=6, max_seq_len=64)
    attn, a = engine.model.blocks[0].attn, engine.model.args
    g = torch.Generator().manual_seed(seed)
    cache = torch.randn(6, 64, a.latent_dim, generator=g)
    q_nope = torch.randn(rows, a.num_heads, a.qk_nope_head_dim, generator=g)
    q_rope = torch.randn(rows, a.num_heads, a.qk_rope_head_dim, generator=g)
    pos = torch.randint(0, keys, (rows,), generator=g)
    pos[-1] = 63 if rows > 1 else pos[-1]
    kv = cache[:rows, :keys]
    attn.attn_kernel = False
    expected = attn._latent_attention(q_nope, q_rope, kv, pos, kernels.eager)
    calls = []
    monkeypatch.setattr(fused_mla, "latent_attention", lambda *args: calls.append(1) or fused_mla.latent_attention_reference(*args))
    attn.attn_kernel = True
    torch.testing.assert_close(attn._latent_attention(q_nope, q_rope, kv, pos, kernels.eager), expected, rtol=1e-4, atol=1e-5)
    assert calls


def test_fused_moe_engine_gives_transformers_tokens(hf_model):
    engine = load_engine(hf_model, max_batch=2, max_seq_len=64, fused_moe=True)
    assert all(b.mlp.fused for b in engine.model.blocks if hasattr(b.mlp, "experts"))
    lengths = [6, 3, 8, 5, 4]
    outs = [h.result() for h in [engine.submit(p, n) for p, n in zip(PROMPTS, lengths)]]
    assert outs == [hf_greedy(hf_model, p, n) for p, n in zip(PROMPTS, lengths)]


def test_mla_prologue_reference_is_the_projection_and_cache_write_of_decode(hf_model):
    from models.engine import fused_mla

    engine = load_engine(hf_model, max_batch=4, max_seq_len=32)
    attn, a = engine.model.blocks[0].attn, engine.model.args
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, hf_model.config.hidden_size, generator=g)
    pos = torch.tensor([0, 17, 5])
    cos, sin = engine.model.rope.cos[pos], engine.model.rope.sin[pos]
    q_nope, q_rope, rows = attn._project(x, cos, sin, kernels.eager)
    h = torch.nn.functional.linear(x, attn.w_in, attn.b_in)
    cache = torch.zeros(4, 32, a.latent_dim)
    got = fused_mla.mla_prologue_reference(h[:, : attn.split_in], h[:, attn.split_in :], cos, sin, attn.kv_norm, attn.kv_eps,
                                           cache, pos, a.num_heads, a.qk_nope_head_dim, a.qk_rope_head_dim, a.kv_lora_rank,
                                           a.rope_interleave)
    torch.testing.assert_close(got, q_rope)
    torch.testing.assert_close(cache[torch.arange(3), pos], rows)
    assert cache.abs().sum() == rows.abs().sum()  # nothing else written


def test_fused_kernels_equal_their_reference_in_the_triton_interpreter(tmp_path):
    # Runs only where Triton is installed (its CPU interpreter); the GPU benchmark
    # (benchmarks/engine_kernels.py) compares the compiled kernels against the same references.
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys

    code = """
import torch
from models.engine import fused_moe as FM, fused_router as FR, kernels as K
torch.manual_seed(0)
E, I, H, k, S = 8, 48, 64, 3, 2
W = FM.ExpertWeights(torch.randn(E, 2 * I, H) / 8, torch.randn(E, H, I) / 8, torch.randn(2 * I * S, H) / 8, torch.randn(H, I * S) / 8)
for T in (1, 7, 20, 90):
    x, res = torch.randn(T, H), torch.randn(T, H)
    gate, bias = torch.randn(E, H), torch.randn(E) / 10
    pe, pw = FR.route_pairs(x, gate, bias, k, True, 2.5, S)
    pe_r, pw_r = FR.route_pairs_reference(x, gate, bias, k, 1, 1, True, 2.5, S, K.eager)
    assert torch.equal(pe.view(T, -1).sort(1)[0], pe_r.view(T, -1).sort(1)[0])
    sp, be = FM.moe_align(pe, W.n_experts)
    sp_k, be_k = FM.moe_align_triton(pe, W.n_experts)
    assert torch.equal(sp, sp_k) and torch.equal(be, be_k)
    y = FM.fused_moe(x, pe, pw, W, sp, be)
    out = FM.combine(y, res, T)
    torch.testing.assert_close(FM.combine_kernel(y, res, T), out)  # the engine's combine: one Triton pass
    torch.testing.assert_close(out, FM.fused_moe_reference(x, pe_r, pw_r, W, res), rtol=1e-4, atol=1e-4)
    for bm in (64, FM.BLOCK_M_LARGE):  # packed steps' blocks: 64 rows (an A/B's), 128 (the default)
        sp, be = FM.moe_align(pe, W.n_experts, bm)
        out = FM.combine(FM.fused_moe(x, pe, pw, W, sp, be, bm), res, T)
        torch.testing.assert_close(out, FM.fused_moe_reference(x, pe_r, pw_r, W, res), rtol=1e-4, atol=1e-4)
for T, k, H, dtype in ((1, 6, 64, torch.float32), (37, 6, 96, torch.bfloat16), (5, 2, 2100, torch.float32)):
    # the grouped-GEMM path's combine: gather by dest, weight, sum in fp32, + shared, + residual, one pass
    ys = torch.randn(T * k, H).to(dtype)
    dest = torch.randperm(T * k)
    w, sh, res = torch.rand(T, k), torch.randn(T, H).to(dtype), torch.randn(T, H).to(dtype)
    for extra in ((None, None), (sh, None), (None, res), (sh, res)):
        got = FM.combine_sorted(ys, dest, w, *extra)
        tol = 1e-5 if dtype == torch.float32 else 8e-2  # bf16: a sum order of its own moves a rounding by an ulp
        torch.testing.assert_close(got, FM.combine_sorted_reference(ys, dest, w, *extra), rtol=tol, atol=tol)
from models.engine import fused_silu as FS
for shape, dtype in (((1, 2 * 1408), torch.bfloat16), ((37, 2 * 300), torch.float32), ((2, 19, 2 * 8), torch.bfloat16),
                     ((0, 64), torch.float32)):
    # SiLU(gate) * up in one pass: rows and columns past a tile's edge, fp32 inside, one rounding (as compiled)
    h = torch.randn(shape).to(dtype)
    gate, up = h.float().chunk(2, dim=-1)
    want = (torch.nn.functional.silu(gate) * up).to(dtype)
    torch.testing.assert_close(FS.silu_mul(h), want)  # bf16: an ulp apart where exp rounds otherwise
h = torch.randn(6, 40)[:, ::2]  # last dim not contiguous: the fallback
torch.testing.assert_close(FS.silu_mul(h, fallback=K.silu_mul), K.silu_mul(h))
for p, E in ((8, 66), (256, 66), (512, 64), (5, 3)):  # the lite shape's pair counts, experts not a power of 2
    pe = torch.randint(0, E, (p,))
    assert all(torch.equal(a, b) for a, b in zip(FM.moe_align(pe, E), FM.moe_align_triton(pe, E)))
for T, E, H, k, S, norm in ((1, 8, 64, 3, 2, True), (20, 16, 96, 4, 1, False), (64, 64, 128, 6, 2, True), (3, 10, 64, 2, 0, True)):
    x, gate, bias = torch.randn(T, H), torch.randn(E, H), torch.randn(E) / 10
    pe, pw, sp, be = FR.route_and_align(x, gate, bias, k, norm, 2.5, S, block_h=32)
    pe_r, pw_r = FR.route_pairs_reference(x, gate, bias, k, 1, 1, norm, 2.5, S, K.eager)
    assert torch.equal(pe.view(T, -1).sort(1)[0], pe_r.view(T, -1).sort(1)[0])
    torch.testing.assert_close(pw.view(T, -1).sum(1), pw_r.view(T, -1).sum(1))
    assert all(torch.equal(a, b) for a, b in zip((sp, be), FM.moe_align(pe, E + S)))
from models.engine import fused_mla as ML
from models.engine.mixed_batch import PackedStep
for B, S, heads, rank, rope in ((1, 40, 4, 32, 8), (3, 200, 16, 64, 16), (2, 7, 3, 20, 6)):
    q_lat, q_rope = torch.randn(heads, B, rank).transpose(0, 1), torch.randn(B, heads, rope)  # q_lat strided, as in decode
    cache = torch.randn(B + 1, S + 9, rank + rope)
    pos = torch.randint(0, S, (B,))
    pos[-1] = S + 8  # a padding row's position, past the bucket: it attends to all S keys
    got = ML.latent_attention(q_lat, q_rope, cache[:B, :S], pos, 0.3)
    torch.testing.assert_close(got, ML.latent_attention_reference(q_lat, q_rope, cache[:B, :S], pos, 0.3), rtol=1e-4, atol=1e-4)
for heads, rank, rope, lengths, S in ((4, 32, 8, (3,), 40), (16, 64, 16, (12,), 70), (3, 20, 6, (1, 5), 30),
                                      (2, 16, 4, (4, 33, 2), 130), (4, 32, 8, (17, 3, 9), 60)):
    # pieces of distinct slots at aligned rows, padding between and after (a packed step's piece area)
    align = ML.piece_align(heads)
    offsets = PackedStep.placement(list(lengths), align)
    C = offsets[-1] + lengths[-1] + 5
    q_lat, q_rope = torch.randn(heads, C, rank).transpose(0, 1), torch.randn(C, heads, rope)  # q_lat strided
    kv = torch.randn(4 * S, 2 * (rank + rope))[:, : rank + rope]  # strided keys: 4 slots of S rows, flattened
    pos, base = torch.full((C,), S + 30), torch.full((C,), -1)  # padding: past the bucket, no slot
    for j, (off, n) in enumerate(zip(offsets, lengths)):
        start = int(torch.randint(0, S - n + 1, ()))
        pos[off : off + n], base[off : off + n] = torch.arange(start, start + n), ((j + 1) % 4) * S
    got = ML.piece_attention(q_lat, q_rope, kv, pos, base, 0.3)
    torch.testing.assert_close(got, ML.piece_attention_reference(q_lat, q_rope, kv, pos, base, 0.3), rtol=1e-4, atol=1e-4)
    assert not got[base < 0].any()
# every GPU tile (BLOCK_M up to 64 rows) keeps each block within one piece: lite's 16 heads, pieces aligned to 4 queries
import triton
heads, rank, rope, S = 16, 64, 16, 48
lengths = (5, 3, 7, 1)
offsets = PackedStep.placement(list(lengths), ML.piece_align(heads))
C = offsets[-1] + lengths[-1] + 3
kv = torch.randn(4 * S, rank + rope)
pos, base = torch.full((C,), S - 1), torch.full((C,), -1)
for j, (off, n) in enumerate(zip(offsets, lengths)):
    pos[off : off + n], base[off : off + n] = torch.arange(S - n - j, S - j), ((j + 1) % 4) * S
q_lat, q_rope = torch.randn(C, heads, rank), torch.randn(C, heads, rope)
ref = ML.piece_attention_reference(q_lat, q_rope, kv, pos, base, 0.3)
for bm, bs in sorted({(m, s) for m, s, *_ in ML.PIECE_TILES}):
    got = torch.empty(C, heads, rank)
    ML._piece_attn_kernel.fn[(triton.cdiv(C * heads, bm),)](
        q_lat, q_rope, kv, pos, base, got, q_lat.stride(0), q_lat.stride(1), q_rope.stride(0), q_rope.stride(1),
        kv.stride(0), 0.3, C * heads, H=heads, R=rank, R_P2=rank, DR=rope, DR_P2=rope, BLOCK_M=bm, BLOCK_S=bs)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
ML.tune_piece_attention(4, 32, 8, [4, 8], 16, torch.float32, "cpu", 0.3)  # runs the kernel on each piece size
for interleave in (True, False):
    B, heads, nope, rope, rank, seq = 3, 4, 16, 8, 32, 10
    q, kv = torch.randn(B, heads * (nope + rope)), torch.randn(B, 2 * (rank + rope))[:, : rank + rope]
    cos, sin, w, pos = torch.randn(B, rope // 2), torch.randn(B, rope // 2), torch.randn(rank), torch.tensor([0, 9, 4])
    c1, c2 = torch.randn(B, seq, rank + rope), None
    c2 = c1.clone()
    r1 = ML.mla_prologue(q, kv, cos, sin, w, 1e-6, c1, pos, heads, nope, rope, rank, interleave)
    r2 = ML.mla_prologue_reference(q, kv, cos, sin, w, 1e-6, c2, pos, heads, nope, rope, rank, interleave)
    torch.testing.assert_close(r1, r2)
    torch.testing.assert_close(c1, c2)
    for B, C, heads, nope, rope in ((1, 1, 16, 128, 64), (2, 5, 3, 12, 6), (1, 3, 20, 8, 4)):  # prefill's query
        q = torch.randn(B, C, heads * (nope + rope) + 7)[..., : heads * (nope + rope)].unflatten(-1, (heads, nope + rope))
        cos, sin = torch.randn(C, rope // 2), torch.randn(C, rope // 2)
        want = ML.prefill_query_reference(q, cos, sin, nope, interleave)
        torch.testing.assert_close(ML.prefill_query(q, cos, sin, nope, interleave), want)
# the whole engine with every kernel (interpreted) gives transformers' greedy tokens
from transformers import DeepseekV3ForCausalLM
from models.engine import load_engine
from models.presets import preset_config
hf = DeepseekV3ForCausalLM(preset_config("tiny")).eval()
engine = load_engine(hf, max_batch=2, max_seq_len=64, fused_moe=True, attention_kernel=True)
assert engine.model.blocks[0].attn.prologue_kernel and engine.model.blocks[0].mlp.route_align
assert engine.model.blocks[0].attn.attn_kernel
prompts = [[5, 6, 7, 8, 9], [1, 2, 3], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]]
with torch.no_grad():
    expected = [hf.generate(torch.tensor([p]), max_new_tokens=5, do_sample=False)[0, len(p):].tolist() for p in prompts]
assert engine.generate(prompts, 5) == expected
# and with the packed mixed step: the third prompt, arriving while the first decodes, prefilled in pieces of 4
engine = load_engine(hf, max_batch=2, max_seq_len=64, fused_moe=True, attention_kernel=True, prefill_budget=4,
                     mixed_step="graph")
assert engine.model.blocks[0].attn.piece_kernel
first = engine.submit(prompts[0], 5)
engine.step()
third = engine.submit(prompts[2], 5)
assert [first.result(), third.result()] == [expected[0], expected[2]] and engine.stats["mixed_forwards"] == 3
# and two prompts packed into one step (the second at row 16: 4 heads), beside the first's decode row
engine = load_engine(hf, max_batch=3, max_seq_len=64, fused_moe=True, attention_kernel=True, prefill_budget=32,
                     mixed_step="graph")
first = engine.submit(prompts[0], 5)
engine.step()
others = [engine.submit(p, 5) for p in prompts[1:]]
engine.step()
assert engine.stats["mixed_forwards"] == 1 and all(len(h.request.output) == 1 for h in others)
assert [first.result()] + [h.result() for h in others] == expected
print("ok")
"""
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


# ---- the packed (graphed) mixed step: decode rows + one padded piece in fixed shapes ---------------

@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=mixed_layouts(), chunk=st.sampled_from([12, 16, 48]), fused=st.booleans(), piece_kernel=st.booleans())
def test_packed_step_equals_separate_decode_and_prefill(hf_model, layout, chunk, fused, piece_kernel):
    """The packed step (decode rows padded to a bucket, up to a few pieces of distinct slots packed into an area
    of `chunk` rows, each after the first at an aligned row, absorbed attention for all) gives the logits and
    cache rows of the decode step and each piece's prefill run apart; padding writes only the cache's last
    position, which no request uses. With piece_kernel the pieces' attention takes fused_mla.piece_attention's
    path (its reference here: each row over its own slot, causal, padding rows zero)."""
    from models.engine import fused_mla
    from models.engine.cuda_graphs import PackedRunner

    pos, pieces, seed = layout
    if not pos:
        pos = [63]  # a packed step has decode rows (dummies at least)
    engine = load_engine(hf_model, max_batch=6, max_seq_len=64, fused_moe=fused, packed_fused_moe=fused)
    model = engine.model
    packed = engine.cache
    runner = PackedRunner(model, packed, 6, chunk, use_graphs=False)
    pieces = pieces or [(5, 0, 3)]
    while not runner.fits([n for *_, n in pieces]):
        pieces = pieces[:-1]  # what the scheduler would pack: a prefix of the pieces
    gen = torch.Generator().manual_seed(seed)
    packed.copy_(torch.randn(engine.cache.shape, generator=gen))
    vocab = model.args.vocab_size
    dec_tokens = torch.randint(0, vocab, (len(pos),), generator=gen)
    piece_tokens = [torch.randint(0, vocab, (n,), generator=gen) for *_, n in pieces]
    dec_pos = torch.tensor(pos, dtype=torch.long)
    keys = max([p + 1 for p in pos if p != 63] or [1])

    apart = packed.clone()
    ref_dec = model.decode(dec_tokens, dec_pos, apart, keys)
    ref_last = torch.cat([model.logits(model.prefill(t[None], apart, torch.tensor([slot]), start)[0, -1:])
                          for (slot, start, _), t in zip(pieces, piece_tokens)])

    calls = []
    for block in model.blocks:
        block.attn.piece_kernel = piece_kernel
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fused_mla, "piece_attention", lambda *a, **k: calls.append(1) or fused_mla.piece_attention_reference(*a, **k))
        dec, last = runner.step(dec_tokens.tolist(), pos, keys,
                                [(slot, t.tolist(), start) for (slot, start, _), t in zip(pieces, piece_tokens)])
    assert len(calls) == (model.args.num_layers if piece_kernel else 0)
    real = [i for i, p in enumerate(pos) if p != 63]
    torch.testing.assert_close(dec[real], ref_dec[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(last, ref_last, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(packed[:, :, :63], apart[:, :, :63], atol=1e-5, rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), min_size=0, max_size=6), align=st.sampled_from([1, 4, 16]),
       chunk=st.sampled_from([16, 64, 128]))
def test_packed_pieces_are_placed_aligned_without_overlap(lengths, align, chunk):
    """PackedStep.placement: the first piece at row 0, each next one at the first multiple of align past the one
    before; host_layout gives each piece row its slot's base and position, every other row padding."""
    from models.engine.mixed_batch import PackedStep

    offsets = PackedStep.placement(lengths, align)
    assert offsets[:1] in ([], [0]) and all(o % align == 0 for o in offsets)
    assert all(b >= a + n and b - (a + n) < align for a, b, n in zip(offsets, offsets[1:], lengths))
    if not lengths or PackedStep.rows_used(lengths, align) > chunk or len(lengths) > 4:
        return
    pieces = [(j + 2, list(range(100, 100 + n)), 3 * j) for j, n in enumerate(lengths)]
    buf = PackedStep.host_layout([7], [5], 2, chunk, pieces, 4, align, 64)
    assert len(buf) == PackedStep.size(2, chunk, 4)
    t = 2 + chunk
    ids, step = PackedStep.view(torch.tensor(buf), 2, chunk, 48, 4, 64)
    tokens, pos, flat = ids.tolist(), step.pos.tolist(), step.flat.tolist()
    base, piece, last = step.base.tolist(), step.row_piece.tolist(), step.last.tolist()
    assert len(tokens) == len(pos) == len(flat) == t and len(base) == len(piece) == chunk and len(last) == 4
    owned = {}
    for j, ((slot, toks, start), off) in enumerate(zip(pieces, offsets)):
        for i in range(len(toks)):
            r = off + i
            owned[r] = j
            assert (tokens[2 + r], pos[2 + r], flat[2 + r]) == (toks[i], start + i, slot * 64 + start + i)
            assert (base[r], piece[r]) == (slot * 64, j)
        assert last[j] == 2 + off + len(toks) - 1
    assert all(base[r] == -1 and piece[r] == -1 and pos[2 + r] == 63 for r in range(chunk) if r not in owned)


@pytest.mark.parametrize("budget", [3, 4, 16])
def test_packed_mixed_steps_give_transformers_tokens(hf_model, budget):
    """Requests arriving while others decode, each prompt prefilled in pieces beside the decode rows
    (mixed_step='graph'): transformers' greedy tokens; no step carries more prompt tokens than its budget."""
    engine = load_engine(hf_model, max_batch=3, max_seq_len=64, prefill_budget=budget, mixed_step="graph")
    plans = _staggered_prompts_give_transformers_tokens(engine, hf_model)
    packed = [plan for plan in plans if plan.decode and plan.prefill]
    assert packed and all(plan.prefill_tokens <= budget for plan in packed)
    assert engine.stats["mixed_forwards"] == len(packed)
    import models.engine as E

    assert load_engine(hf_model, max_batch=3, max_seq_len=64, mixed_step="graph").prefill_budget == E.PACKED_CHUNK_DEFAULT


def test_a_packed_step_carries_several_pieces_first_come_first_served(hf_model):
    """Prompts waiting while a request decodes are packed into one step, each piece after the first at an
    aligned row (16 here: 4 heads); the one that does not fit whole is cut, carried to the next step and
    continued first. Every request gets transformers' greedy tokens."""
    engine = load_engine(hf_model, max_batch=4, max_seq_len=64, prefill_budget=24, mixed_step="graph")
    assert engine.packed_runner.align == 16
    plans = _recorded(engine)
    first = engine.submit(PROMPTS[1], 8)
    engine.step()
    long_prompt = PROMPTS[2] + PROMPTS[0]  # 16 tokens
    rest = [engine.submit(p, 6) for p in (PROMPTS[2], long_prompt)]
    engine.step()
    assert [(len(p.request.prompt), p.start, p.stop) for p in plans[-1].prefill] == [(11, 0, 11), (16, 0, 8)]
    engine.step()
    assert [(len(p.request.prompt), p.start, p.stop) for p in plans[-1].prefill] == [(16, 8, 16)]
    assert engine.stats["mixed_forwards"] == 2
    more = [engine.submit(p, 4) for p in (PROMPTS[0], PROMPTS[3], PROMPTS[4])]  # 5 + 1 + 4 tokens, one slot free
    engine.step()
    assert [(len(p.request.prompt), p.start, p.stop) for p in plans[-1].prefill] == [(5, 0, 5)]
    assert first.result() == hf_greedy(hf_model, PROMPTS[1], 8)
    assert [h.result() for h in rest] == [hf_greedy(hf_model, p, 6) for p in (PROMPTS[2], long_prompt)]
    assert [h.result() for h in more] == [hf_greedy(hf_model, p, 4) for p in (PROMPTS[0], PROMPTS[3], PROMPTS[4])]
    one = load_engine(hf_model, max_batch=4, max_seq_len=64, prefill_budget=24, mixed_step="graph", packed_max_pieces=1)
    plans = _recorded(one)
    first = one.submit(PROMPTS[1], 8)
    one.step()
    rest = [one.submit(p, 6) for p in (PROMPTS[2], long_prompt)]
    one.step()
    assert [(len(p.request.prompt), p.start, p.stop) for p in plans[-1].prefill] == [(11, 0, 11)]  # one piece a step
    assert [h.result() for h in rest] == [hf_greedy(hf_model, p, 6) for p in (PROMPTS[2], long_prompt)]


def test_prefill_attention_takes_cudnn_unpadded_only_for_a_plain_chunk_on_the_cards_measured(monkeypatch):
    """One plain causal prefill chunk on a card of PREFILL_CUDNN_CAPABILITIES (Hopper: measured faster) goes to
    cuDNN with V unpadded; a continued chunk, another card, a forced backend list or the CPU keep the old path."""
    from types import SimpleNamespace

    from models.engine import layers

    caps = {"cuda:0": (9, 0), "cuda:1": (8, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: caps[device])
    hopper, ampere = SimpleNamespace(is_cuda=True, device="cuda:0"), SimpleNamespace(is_cuda=True, device="cuda:1")
    assert layers._prefill_cudnn(hopper, plain_causal=True)
    assert not layers._prefill_cudnn(hopper, plain_causal=False)  # a lower-right mask: flash with V padded
    assert not layers._prefill_cudnn(ampere, plain_causal=True)
    assert not layers._prefill_cudnn(torch.zeros(1), plain_causal=True)  # CPU
    monkeypatch.setattr(layers, "PREFILL_SDPA_BACKENDS", ("flash",))  # a benchmark's forced list wins
    assert not layers._prefill_cudnn(hopper, plain_causal=True)


def test_default_mixed_step_is_the_packed_graph_step_where_decode_is_graphed(hf_model, monkeypatch):
    """mixed_step=None: "graph" with pieces of PACKED_CHUNK_DEFAULT tokens where decode runs in CUDA graphs
    (a GPU), whole prompts where it does not (CPU); an explicit budget or mode wins."""
    import models.engine as E

    assert E.default_mixed_step(True) == "graph" and E.default_mixed_step(False) is False
    cpu = load_engine(hf_model, max_batch=2, max_seq_len=64)
    assert cpu.mixed_step is False and cpu.packed_runner is None and cpu.prefill_budget is None
    monkeypatch.setattr(E, "default_mixed_step", lambda graphs: "graph")  # as on a GPU, the step run eagerly
    graphed = load_engine(hf_model, max_batch=2, max_seq_len=64)
    assert graphed.mixed_step == "graph" and graphed.packed_runner.chunk == E.PACKED_CHUNK_DEFAULT
    assert load_engine(hf_model, max_batch=2, max_seq_len=64, prefill_budget=8).packed_runner.chunk == 8
    assert load_engine(hf_model, max_batch=2, max_seq_len=64, mixed_step=False).packed_runner is None


def test_capture_graphs_takes_every_bucket_up_front_writing_only_the_unused_position(hf_model, monkeypatch):
    """Engine.capture_graphs runs one decode step per (batch, sequence) bucket and one packed step per (batch,
    piece, sequence) bucket, every row at the cache's last position (which no request uses): the cache rows a
    request holds are untouched. On CPU (no graphs) it returns 0 and runs nothing."""
    engine = load_engine(hf_model, max_batch=4, max_seq_len=64, prefill_budget=16, mixed_step="graph")
    assert engine.capture_graphs() == 0.0
    prompt = engine.submit(PROMPTS[1], 3)
    engine.step()  # a request holds slot 0 while the graphs are taken
    held = engine.cache.clone()
    decode, packed = [], []
    run_decode, run_packed = engine.runner.step, engine.packed_runner._replay

    def decode_step(tokens, pos, max_len):
        decode.append((tokens.shape[0], max_len, set(pos.tolist())))
        engine.runner.use_graphs = False
        try:
            return run_decode(tokens, pos, max_len)
        finally:
            engine.runner.use_graphs = True

    def packed_step(b, c, keys):
        t = b + c
        packed.append((b, c, keys, set(engine.packed_runner.buf[t : 2 * t].tolist())))  # every token's position
        return engine.packed_runner._run(b, c, keys)

    for runner in (engine.runner, engine.packed_runner):
        monkeypatch.setattr(runner, "use_graphs", True)  # as on a GPU: the steps run eagerly here
    monkeypatch.setattr(engine.runner, "step", decode_step)
    monkeypatch.setattr(engine.packed_runner, "_replay", packed_step)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    from models.engine import fused_mla

    tuned = []  # the piece kernel is tuned on a real piece of each size before the captures (their pieces are empty)
    monkeypatch.setattr(fused_mla, "tune_piece_attention", lambda heads, rank, rope, chunks, *rest: tuned.append(list(chunks)))
    monkeypatch.setattr(fused_mla, "piece_attention", fused_mla.piece_attention_reference)
    for block in engine.model.blocks:
        monkeypatch.setattr(block.attn, "piece_kernel", True)
    engine.capture_graphs()
    assert tuned == [engine.packed_runner.piece_sizes]
    r, p = engine.runner, engine.packed_runner
    assert sorted((b, s) for b, s, _ in decode) == sorted((b, s) for b in r.batch_sizes for s in r.seq_sizes)
    assert sorted(x[:3] for x in packed) == sorted((b, c, s) for b in p.batch_sizes for c in p.piece_sizes for s in p.seq_sizes)
    assert all(rows == {63} for *_, rows in decode) and all(rows == {63} for *_, rows in packed)
    torch.testing.assert_close(engine.cache[:, :, :63], held[:, :, :63])
    monkeypatch.undo()
    assert prompt.result() == hf_greedy(hf_model, PROMPTS[1], 3)


def test_packed_backlog_switches_to_whole_prompts(hf_model):
    """With more prompt tokens queued than packed_backlog, a step prefills whole prompts (batched) behind
    the decode rows instead of one packed piece; the tokens stay transformers'."""
    engine = load_engine(hf_model, max_batch=4, max_seq_len=64, prefill_budget=4, mixed_step="graph", packed_backlog=8)
    plans = _recorded(engine)
    first = engine.submit(PROMPTS[1], 10)
    engine.step()
    rest = [engine.submit(p, 4) for p in (PROMPTS[2], PROMPTS[4])]  # 15 tokens queued > 8
    engine.step()
    assert plans[-1].decode and [len(p.request.prompt) for p in plans[-1].prefill] == [11, 4]
    assert engine.stats["mixed_forwards"] == 0
    assert first.result() == hf_greedy(hf_model, PROMPTS[1], 10)
    assert [h.result() for h in rest] == [hf_greedy(hf_model, p, 4) for p in (PROMPTS[2], PROMPTS[4])]


def test_warm_up_runs_each_step_kind_once_and_leaves_the_engine_idle(hf_model):
    """Engine.warm_up (a replica at load): graphs, then a prompt alone, a packed piece beside its decode row, and
    several prompts at once: packed pieces by default, with a packed_backlog whole prompts (several rows) behind
    decode rows; then the engine is idle with zeroed stats, serves
    transformers' tokens, and refuses to warm up while it holds requests."""
    default = load_engine(hf_model, max_batch=8, max_seq_len=64, prefill_budget=8, mixed_step="graph")
    plans = _recorded(default)
    assert default.warm_up(synthetic=True) > 0
    assert any(p.decode and default._runs_packed(p) for p in plans)
    assert not any(p.decode and p.prefill and not default._runs_packed(p) for p in plans)  # no backlog switch
    engine = load_engine(hf_model, max_batch=8, max_seq_len=64, prefill_budget=8, mixed_step="graph", packed_backlog=16)
    plans = _recorded(engine)
    assert engine.warm_up() == 0.0 and not plans  # CPU: nothing compiled or tuned, so no synthetic steps
    assert engine.warm_up(synthetic=True) > 0
    assert any(not p.decode and len(p.prefill) == 1 for p in plans)  # a prompt alone
    assert any(p.decode and engine._runs_packed(p) for p in plans)  # a packed step
    assert any(p.decode and len(p.prefill) >= 2 and not engine._runs_packed(p) for p in plans)  # backlog, whole prompts
    assert engine.pending() == {"decoding": 0, "prefilling": 0, "waiting": 0}
    assert set(engine.stats.values()) == {0} and sorted(engine._free) == list(range(8))
    assert engine.generate([PROMPTS[2]], 5) == [hf_greedy(hf_model, PROMPTS[2], 5)]
    engine.submit(PROMPTS[0], 2)
    with pytest.raises(RuntimeError):
        engine.warm_up()
    whole = load_engine(hf_model, max_batch=2, max_seq_len=64)  # whole prompts (CPU default): runs as well
    assert whole.warm_up(synthetic=True) > 0 and whole.generate([PROMPTS[1]], 4) == [hf_greedy(hf_model, PROMPTS[1], 4)]


def test_several_pieces_a_step_keep_the_decode_batch_fuller_under_a_backlog(hf_model):
    """A sustained backlog with the switch off (the default: packed steps whatever waits): packing two pieces a step admits
    requests twice as fast as one piece a step, so the same work takes fewer steps with more rows decoding in
    each, with every request's tokens still transformers'."""
    import random

    rng = random.Random(5)
    prompts = [[rng.randrange(1, 500) for _ in range(rng.randint(8, 16))] for _ in range(16)]
    runs = {}
    for pieces in (1, 4):
        engine = load_engine(hf_model, max_batch=8, max_seq_len=64, prefill_budget=32, mixed_step="graph",
                             packed_max_pieces=pieces)
        plans = _recorded(engine)
        first = engine.submit(prompts[0], 12)
        engine.step()
        handles = [first] + [engine.submit(p, 6) for p in prompts[1:]]
        while engine.step():
            pass
        assert all(len(p.prefill) <= pieces for p in plans[1:])
        runs[pieces] = (len(plans), engine.stats["decode_slots"] / engine.stats["decode_steps"], [h.result() for h in handles])
    assert runs[4][0] < runs[1][0] and runs[4][1] > runs[1][1]
    assert runs[4][2] == runs[1][2] == [hf_greedy(hf_model, p, 12 if i == 0 else 6) for i, p in enumerate(prompts)]
