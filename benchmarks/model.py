"""Per-episode cost of Task-Adapter++: a training step and an evaluation forward, with and without the cache.

    python benchmarks/model.py                                   # fsar-tiny, CPU, fp32
    python benchmarks/model.py --clip ViT-B-16 --repeats 1       # real size, random weights, CPU
    python benchmarks/model.py --clip ViT-B-16 --device cuda --amp

One N-way K-shot episode (default 5-way 1-shot, one query per class, T=8, S=3) with random clips and
random weights. Rows:

    train step          forward + backward of the loss (what one SGD step costs, optimiser aside)
    eval, no cache      forward from clips and token ids
    eval, cached        forward from the cached vision prefix (first L-M blocks) and text prefix
    cache, per video    building the vision prefix of one video (paid once per video, not per episode)

Peak memory: CUDA max allocated per row; on CPU the process's peak resident set per row (Linux
resets it through /proc/self/clear_refs; elsewhere it is the high-water mark so far). Not a test.

    python benchmarks/model.py --clip ViT-B-16 --image-size 112 --compare     # issue 15: training step ratios

`--compare` times, alternating in one process (median of `--repeats`), our training step against a
*reference step* with the released code's structure, written here in our own code: the whole text tower
runs every step at the full context length (no text-prefix cache), attention is explicit matrix products
that compute q.k twice per call, the last adapted block runs at every token, everything fp32 (the released
fp16 text tower aligned to fp32, as on CPU). It first prints the max |difference| of the loss and of every
trainable gradient between the two (random non-zero adapters; always in fp32, TF32 off), then
`train_ratio=<reference/ours>` with both peak-memory growths, then `variant_ratio=<faithful/first_adapted>`
(model.temporal_embedding_at). With bf16 on CUDA (--amp, the CUDA default) every timed step runs under the
same bf16 autocast, the reference too (the released code runs its CLIP in half precision on a GPU).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.model import build_model  # noqa: E402
from pipeline.model.alignment import class_prototypes, semantic_scores, task_mask, transition_features, visual_scores  # noqa: E402
from pipeline.model.backbone import text_module  # noqa: E402
from pipeline.model.vision import patch_tokens  # noqa: E402
from pipeline.precision import autocast  # noqa: E402
from pipeline.settings.datasets import ProtocolConfig  # noqa: E402
from pipeline.settings.model import ModelConfig  # noqa: E402

MIB = 2**20


def main() -> None:
    args = _parse()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model_cfg, protocol = _config(args)
    if args.check:
        _check(model_cfg, protocol, args, device)
    model = build_model(model_cfg, protocol, device=device)
    episode = _episode(model, args, device)
    if args.compare:
        _compare(model, model_cfg, protocol, episode, args, device)
        return
    rows = _measure(model, episode, args, device)
    _report(args, model_cfg, model, rows)


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="fsar-tiny", help="open_clip model name (random weights)")
    p.add_argument("--vision-adapted-layers", type=int, default=None, help="M; default 2 (HMDB51 preset, demo)")
    p.add_argument("--text-adapted-layers", type=int, default=None, help="M_t; default 8 (HMDB51 preset), 2 for fsar-* (demo)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="bf16 = autocast on CUDA; default bf16 on CUDA, fp32 on CPU")
    p.add_argument("--amp", action="store_true", help="same as --dtype bf16")
    p.add_argument("--image-size", type=int, default=None, help="default: the clip's native size")
    p.add_argument("--way", type=int, default=5)
    p.add_argument("--shot", type=int, default=1)
    p.add_argument("--query", type=int, default=1, help="queries per class")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--sub-actions", type=int, default=3)
    p.add_argument("--task-context", choices=["faithful", "inductive"], default="faithful")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row (the median is reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--compare", action="store_true", help="training step vs the released structure, and the temporal-embedding variant")
    p.add_argument("--check", action="store_true", help="first check on this device: zero-init = open_clip (fp32), bf16 vs fp32 scores")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def _config(args: argparse.Namespace) -> tuple[ModelConfig, ProtocolConfig]:
    """Model and protocol of the run (no preset loading: the benchmark needs only torch, open_clip, pydantic)."""
    import open_clip

    from pipeline.model import register_clip_configs

    register_clip_configs()
    native = open_clip.get_model_config(args.clip)
    if native is None:
        sys.exit(f"unknown clip {args.clip!r}")
    tiny = args.clip.startswith("fsar-")
    dtype = "bf16" if args.amp else (args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32"))
    model = ModelConfig(
        clip=args.clip,
        pretrained=None,
        image_size=args.image_size or native["vision_cfg"]["image_size"],
        vision_adapted_layers=args.vision_adapted_layers or 2,
        text_adapted_layers=args.text_adapted_layers or (2 if tiny else 8),
        amp=dtype == "bf16",
        task_context=args.task_context,
    )
    protocol = ProtocolConfig(
        num_frames=args.frames, num_sub_actions=args.sub_actions, way=args.way, shot=args.shot, query=args.query
    )
    return model, protocol


def _episode(model, args: argparse.Namespace, device: torch.device) -> dict[str, torch.Tensor]:
    n, k, q, t, s, size = args.way, args.shot, args.query, args.frames, args.sub_actions, model.image_size
    prompts = [f"A video of action about class {c}: step {j}" for c in range(n) for j in range(s)]
    return {
        "support": torch.randn(n * k, t, 3, size, size, device=device),  # (N*K, T, 3, H, W)
        "labels": torch.arange(n, device=device).repeat_interleave(k),  # (N*K,)
        "query": torch.randn(n * q, t, 3, size, size, device=device),  # (N*Q, T, 3, H, W)
        "query_labels": torch.arange(n, device=device).repeat_interleave(q),  # (N*Q,)
        "tokens": model.tokenize(prompts).view(n, s, -1),  # (N, S, ctx)
    }


def _check(model_cfg: ModelConfig, protocol: ProtocolConfig, args: argparse.Namespace, device: torch.device) -> None:
    """Print max |difference| of: zero-init towers vs open_clip (fp32, no TF32); bf16 vs fp32 logits; inductive invariance."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    zero = build_model(model_cfg.model_copy(update={"task_adapter_init": "zero", "amp": False}), protocol, device=device).eval()
    ep = _episode(zero, args, device)
    with torch.inference_mode():
        z_s, _ = zero.encode_videos(ep["support"][:1], ep["query"][:0])  # (1, T, E)
        vision = (z_s[0] - zero.clip.encode_image(ep["support"][0])).abs().max().item()
        text = (zero.encode_text(ep["tokens"]).flatten(0, 1) - zero.clip.encode_text(ep["tokens"].flatten(0, 1))).abs().max().item()
    print(f"check: zero-init vs open_clip, fp32: vision max|diff| {vision:.2e}, text max|diff| {text:.2e}")
    del zero
    torch.manual_seed(0)
    model = build_model(model_cfg.model_copy(update={"task_context": "inductive"}), protocol, device=device).eval()
    with torch.inference_mode():
        fast = model(ep["support"], ep["labels"], ep["query"], ep["tokens"]).logits
        alone = model(ep["support"], ep["labels"], ep["query"][:1], ep["tokens"]).logits
        model.cfg = model.cfg.model_copy(update={"amp": False})
        exact = model(ep["support"], ep["labels"], ep["query"], ep["tokens"]).logits
    finite = bool(torch.isfinite(fast).all())
    print(
        f"check: logits finite {finite}; {'bf16' if model_cfg.amp else 'fp32'} vs fp32 max|diff| {(fast - exact).abs().max().item():.2e} "
        f"(|logits| up to {exact.abs().max().item():.2f}); inductive, query alone vs with others max|diff| "
        f"{(alone[0] - fast[0]).abs().max().item():.2e}"
    )
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def _measure(model, ep: dict[str, torch.Tensor], args: argparse.Namespace, device: torch.device) -> dict[str, dict[str, float]]:
    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        model.loss(model(ep["support"], ep["labels"], ep["query"], ep["tokens"]), ep["query_labels"]).backward()

    def eval_full() -> None:
        with torch.inference_mode():
            model(ep["support"], ep["labels"], ep["query"], ep["tokens"])

    with torch.inference_mode():
        s_states, q_states = model.vision_prefix(ep["support"]), model.vision_prefix(ep["query"])
        text = model.text_prefix(ep["tokens"].flatten(0, 1)).unflatten(0, ep["tokens"].shape[:2])

    def eval_cached() -> None:
        with torch.inference_mode():
            model(s_states, ep["labels"], q_states, ep["tokens"], text_prefix=text, support_is_prefix=True, query_is_prefix=True)

    def cache_one_video() -> None:
        with torch.inference_mode():
            model.vision_prefix(ep["query"][:1])

    rows: dict[str, dict[str, float]] = {}
    model.eval()
    rows["cache, per video"] = _time(cache_one_video, args, device)
    rows["eval, cached"] = _time(eval_cached, args, device)
    rows["eval, no cache"] = _time(eval_full, args, device)
    model.train()
    rows["train step"] = _time(train_step, args, device)
    return rows


def _time(fn: Callable[[], None], args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    for _ in range(args.warmup):
        fn()
    _reset_peak(device)
    times = []
    for _ in range(args.repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    times.sort()
    return {"seconds": times[len(times) // 2], "peak_mib": _peak_mib(device)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak resident set (VmHWM)
    except OSError:
        pass


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _report(args: argparse.Namespace, cfg: ModelConfig, model, rows: dict[str, dict[str, float]]) -> None:
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    head = {
        "clip": args.clip,
        "device": device_name,
        "dtype": "bf16 autocast" if cfg.amp and args.device.startswith("cuda") else "fp32",
        "episode": f"{args.way}-way {args.shot}-shot, {args.query} query/class, T={args.frames}, S={args.sub_actions}",
        "M": cfg.vision_adapted_layers,
        "M_t": cfg.text_adapted_layers,
        "image_size": model.image_size,
        "trainable": model.parameter_counts()["trainable"],
        "task_context": cfg.task_context,
    }
    if args.json:
        print(json.dumps({**head, "rows": rows}))
        return
    print(", ".join(f"{k}={v}" for k, v in head.items()))
    memory = "peak MiB (CUDA allocated)" if args.device.startswith("cuda") else "peak MiB (process RSS)"
    print(f"{'':20s} {'seconds':>10s} {memory:>26s}")
    for name, row in rows.items():
        print(f"{name:20s} {row['seconds']:10.4f} {row['peak_mib']:26.1f}")
    full, cached = rows["eval, no cache"]["seconds"], rows["eval, cached"]["seconds"]
    print(f"eval speed-up from the cache: {full / cached:.2f}x")


# ---- the released code's structure, in our own code (the reference of `--compare`) --------------------------------


def _ref_attention(attn, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
    """Explicit attention with a frozen nn.MultiheadAttention's weights, q.k computed twice. x: (B, L, D)."""
    batch, length, width = x.shape
    heads = attn.num_heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)  # 3 x (B, L, D)
    q, k, v = (t.reshape(batch, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))  # (B, H, L, D/H)
    scale = (width // heads) ** -0.5
    allowed = torch.ones(length, length, dtype=torch.bool, device=x.device) if mask is None else mask  # (L, L)
    if causal:
        allowed = allowed & torch.ones_like(allowed).tril()
    bias = torch.zeros(length, length, device=x.device).masked_fill(~allowed, float("-inf"))  # (L, L)
    weights = ((q * scale) @ k.transpose(-2, -1) + bias).softmax(dim=-1)  # (B, H, L, L) the attention map
    logits = (q * scale) @ k.transpose(-2, -1) + bias  # the second q.k of the call
    out = logits.softmax(dim=-1) @ v  # (B, H, L, D/H)
    del weights
    out = out.transpose(1, 2).reshape(batch, length, width)  # (B, L, D)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


def _ref_along(attn, x: torch.Tensor, dim: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reference attention along axis `dim` of x (..., D): permute, make contiguous, attend, permute back."""
    moved = x.movedim(dim, -2).contiguous()  # (..., L, D)
    out = _ref_attention(attn, moved.reshape(-1, *moved.shape[-2:]), mask)
    return out.view(moved.shape).movedim(-2, dim)


def _ref_frozen(block, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
    x = x + _ref_attention(block.attn, block.ln_1(x), causal=causal)
    return x + block.mlp(block.ln_2(x))


def _ref_vision(model, clips: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(V, T, 3, H, W) -> (V, T, E): temporal embedding at the input, every block at every token."""
    visual, vision = model.clip.visual, model.vision
    videos, frames = clips.shape[:2]
    x = patch_tokens(visual, clips.flatten(0, 1)).unflatten(0, (videos, frames))  # (V, T, P+1, D)
    x = visual.ln_pre(x + vision.temporal_embedding[:, None, :])
    blocks = visual.transformer.resblocks
    for block in blocks[: vision.num_frozen]:
        x = _ref_frozen(block, x.flatten(0, 1)).unflatten(0, (videos, frames))
    for block, ad in zip(blocks[vision.num_frozen :], vision.blocks, strict=True):
        x = x + ad.temporal(_ref_along(block.attn, block.ln_1(x), -3))  # over frames
        x = x + ad.spatial(_ref_along(block.attn, block.ln_1(x), -2))  # over tokens
        x = x + ad.task(_ref_along(block.attn, block.ln_1(x), -4, mask))  # over the task's videos
        h = block.ln_2(x)
        x = x + block.mlp(h) + ad.mlp(h)
    return visual.ln_post(x[..., 0, :]) @ visual.proj  # (V, T, E)


def _ref_text(model, tokens: torch.Tensor) -> torch.Tensor:
    """(N, S, ctx) -> (N, S, E): the whole text tower at the full context length, every step."""
    text, adapted = text_module(model.clip), model.text
    classes, prompts, length = tokens.shape
    x = text.token_embedding(tokens.flatten(0, 1)) + text.positional_embedding[:length]  # (N*S, ctx, D_t)
    blocks = text.transformer.resblocks
    for block in blocks[: adapted.num_frozen]:
        x = _ref_frozen(block, x, causal=True)
    x = x.unflatten(0, (classes, prompts))  # (N, S, ctx, D_t)
    for block, ad in zip(blocks[adapted.num_frozen :], adapted.blocks, strict=True):
        x = x + _ref_attention(block.attn, block.ln_1(x).flatten(0, 1), causal=True).view(x.shape)
        x = x + ad.order(_ref_along(block.attn, block.ln_1(x), 1))  # across the S prompts
        x = x + block.mlp(block.ln_2(x))
    return adapted._pool(text, x.flatten(0, 1), tokens.flatten(0, 1)).unflatten(0, (classes, prompts))  # (N, S, E)


def _ref_loss(model, ep: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss of one episode through the reference structure (same scores as the model's)."""
    num_support, num_classes = ep["support"].shape[0], ep["tokens"].shape[0]
    mask = task_mask(num_support, ep["query"].shape[0], model.cfg.task_context, device=ep["support"].device)  # (V, V)
    z = _ref_vision(model, torch.cat([ep["support"], ep["query"]]), mask)  # (V, T, E)
    z_s, z_q = z[:num_support], z[num_support:]
    vis = visual_scores(z_q, class_prototypes(z_s, ep["labels"], num_classes))  # (Q, N)
    sem = semantic_scores(transition_features(z, num_support, mask, model.ca_norm), _ref_text(model, ep["tokens"]), model.windows)
    return F.cross_entropy(model.cfg.logit_scale * vis * sem, ep["query_labels"])


def _ref_step_loss(model, ep: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """The reference loss under the run's precision (bf16 autocast on CUDA with model.amp, like the model's own forward)."""
    with autocast(device, model.cfg.amp):
        return _ref_loss(model, ep)


def _our_loss(model, ep: dict[str, torch.Tensor], text_prefix: torch.Tensor) -> torch.Tensor:
    """The training step's loss as `Trainer.step` computes it (the text prefix from the embeddings cache)."""
    return model.loss(model(ep["support"], ep["labels"], ep["query"], ep["tokens"], text_prefix=text_prefix), ep["query_labels"])


def _compare(model, cfg: ModelConfig, protocol: ProtocolConfig, ep: dict[str, torch.Tensor], args: argparse.Namespace,
             device: torch.device) -> None:
    """Print the loss/gradient agreement, `train_ratio=` (reference/ours) and `variant_ratio=` (faithful/first_adapted)."""
    amp, tf32 = cfg.amp, (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    model.cfg = model.cfg.model_copy(update={"amp": False})  # the agreement check in fp32 (the timing below in the run's dtype)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero adapters, so that every gradient is non-trivial
        for param in model.parameters():
            if param.requires_grad:
                param.copy_((torch.randn(param.shape, generator=gen) * 0.02).to(device))
        text_prefix = model.text_prefix(ep["tokens"].flatten(0, 1)).unflatten(0, ep["tokens"].shape[:2])  # the embeddings cache
    model.train()
    variant = build_model(cfg.model_copy(update={"temporal_embedding_at": "first_adapted"}), protocol, device=device).train()
    variant.load_trainable_state_dict(model.trainable_state_dict())
    steps = {
        "reference": (model, lambda: _ref_step_loss(model, ep, device)),
        "ours": (model, lambda: _our_loss(model, ep, text_prefix)),
        "first_adapted": (variant, lambda: _our_loss(variant, ep, text_prefix)),
    }
    grads = {}
    for name in ("reference", "ours"):
        owner, loss_fn = steps[name]
        owner.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        grads[name] = (float(loss.detach()), {n: p.grad.clone() for n, p in owner.named_parameters() if p.grad is not None})
    (ref_loss, ref_g), (our_loss, our_g) = grads["reference"], grads["ours"]
    diff = max((ref_g[n] - our_g[n]).abs().max().item() for n in ref_g)
    scale = max(g.abs().max().item() for g in ref_g.values())
    print(f"check: loss reference {ref_loss:.6f} ours {our_loss:.6f} |diff| {abs(ref_loss - our_loss):.2e}; "
          f"gradients of {len(ref_g)} tensors (same set: {set(ref_g) == set(our_g)}) max|diff| {diff:.2e} (max|grad| {scale:.2e}), fp32")
    model.cfg = model.cfg.model_copy(update={"amp": amp})
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    times: dict[str, list[float]] = {name: [] for name in steps}
    peaks = {name: _activation_mib(owner, loss_fn, device) for name, (owner, loss_fn) in steps.items()}
    for rep in range(args.warmup + args.repeats):
        for name, (owner, loss_fn) in steps.items():
            owner.zero_grad(set_to_none=True)
            _sync(device)
            start = time.perf_counter()
            loss_fn().backward()
            _sync(device)
            if rep >= args.warmup:
                times[name].append(time.perf_counter() - start)
    med = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    what = "CUDA peak allocated" if device.type == "cuda" else "activations saved for backward"
    precision = "bf16 autocast" if amp and device.type == "cuda" else "fp32"
    print(f"train step ({precision}) median of {args.repeats}: reference {med['reference']:.3f} s, ours {med['ours']:.3f} s, "
          f"first_adapted {med['first_adapted']:.3f} s; peak MiB ({what}): reference {peaks['reference']:.0f}, "
          f"ours {peaks['ours']:.0f}, first_adapted {peaks['first_adapted']:.0f}")
    print(f"train_ratio={med['reference'] / med['ours']:.2f} (reference/ours), peak_mib reference={peaks['reference']:.0f} ours={peaks['ours']:.0f}")
    print(f"variant_ratio={med['ours'] / med['first_adapted']:.2f} (faithful/first_adapted)")


def _activation_mib(owner, loss_fn: Callable[[], torch.Tensor], device: torch.device) -> float:
    """Peak memory of one step: CUDA max allocated growth, or on CPU (where the resident set keeps its high-water
    mark) the bytes autograd saves for the backward pass, each storage once, parameters left out (MiB)."""
    owner.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        loss_fn().backward()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / MIB
    params = {p.untyped_storage().data_ptr() for p in owner.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    loss.backward()
    return sum(seen.values()) / MIB


if __name__ == "__main__":
    main()
