#!/usr/bin/env python3
"""Golden tensors for the MoE layer, made by PyTorch.

Writes tests/golden/moe_golden.safetensors: for each case, the router and expert weights
(nn.Linear layout [out, in]), an input x [T, H], the output y [T, H] of a Hugging Face
style sparse MoE block, and the routing (top-k expert ids and weights) it used.

The block is the transformers MixtralSparseMoeBlock forward, written out here in plain torch
(so this script needs torch only): router Linear(H, E, bias=False) -> softmax in float ->
topk(k) -> optional renormalisation -> for each expert, the tokens routed to it through the
expert FFN, scaled by their routing weight and index_add_'ed into the output.
Expert kinds: SwiGLU w2(silu(w1 x) * w3 x) (Mixtral, no biases) and a GELU MLP
fc2(gelu(fc1 x + b1)) + b2 (exact erf GELU).

Cases (all f32, seed fixed, file < 1 MB):
  swiglu     T=37 H=64 I=48 E=8 k=2 renormalise
  gelu       T=37 H=64 I=48 E=8 k=3 no renormalisation, expert 7 receives no token
  swiglu_k3  as gelu but with SwiGLU experts

Keys per case C: C.router [E,H], C.w1.{e} [I,H], C.w2.{e} [H,I], C.w3.{e} [I,H] (swiglu),
C.b1.{e} [I], C.b2.{e} [H] (gelu; w1/w2 are fc1/fc2), C.x [T,H], C.y [T,H],
C.logits [T,E] (router output), C.topk_idx [T,k] int32, C.topk_w [T,k] (weights applied).
Metadata: "cases", and per case C.tokens/hidden/inter/experts/top_k, C.renormalize
("true"/"false"), C.expert_kind ("swiglu"/"gelu_mlp"), C.empty_experts (comma list).

Inputs are resampled per token until the k-th and (k+1)-th router probabilities differ by
at least 1e-3 (relative), so a reimplementation whose router logits differ in the last bits
(another GEMM summation order) selects the same experts.

Usage: python3 python/make_golden_moe.py [--out tests/golden/moe_golden.safetensors]
"""
import argparse
import copy
import json
import os
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

SEED = 20261124
MIN_GAP = 1e-3


class SwiGluExpert(nn.Module):
    """MixtralBlockSparseTop2MLP: w2(silu(w1 x) * w3 x)."""

    def __init__(self, hidden, inter):
        super().__init__()
        self.w1 = nn.Linear(hidden, inter, bias=False)
        self.w2 = nn.Linear(inter, hidden, bias=False)
        self.w3 = nn.Linear(hidden, inter, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class GeluExpert(nn.Module):
    """fc2(gelu(fc1 x)) with biases, exact (erf) GELU."""

    def __init__(self, hidden, inter):
        super().__init__()
        self.fc1 = nn.Linear(hidden, inter, bias=True)
        self.fc2 = nn.Linear(inter, hidden, bias=True)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="none"))


class MixtralSparseMoeBlock(nn.Module):
    """The transformers MixtralSparseMoeBlock forward (HF loop over experts)."""

    def __init__(self, hidden, inter, experts, top_k, renormalize=True, kind="swiglu"):
        super().__init__()
        self.hidden_dim = hidden
        self.num_experts = experts
        self.top_k = top_k
        self.renormalize = renormalize
        self.gate = nn.Linear(hidden, experts, bias=False)
        make = SwiGluExpert if kind == "swiglu" else GeluExpert
        self.experts = nn.ModuleList([make(hidden, inter) for _ in range(experts)])

    def route(self, hidden_states):
        """Returns (router_logits, routing_weights [T,k] in x's dtype, selected_experts [T,k])."""
        router_logits = self.gate(hidden_states)
        routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
        routing_weights, selected_experts = torch.topk(routing_weights, self.top_k, dim=-1)
        if self.renormalize:
            routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
        return router_logits, routing_weights.to(hidden_states.dtype), selected_experts

    def forward(self, hidden_states):
        """hidden_states [B, S, H] or [T, H] -> (output of the same shape, router logits [T, E])."""
        shape = hidden_states.shape
        hidden_states = hidden_states.reshape(-1, self.hidden_dim)
        router_logits, routing_weights, selected_experts = self.route(hidden_states)
        final_hidden_states = torch.zeros_like(hidden_states)
        # [E, k, T]: expert_mask[e, j, t] = token t's j-th choice is expert e.
        expert_mask = F.one_hot(selected_experts, num_classes=self.num_experts).permute(2, 1, 0)
        for expert_idx in range(self.num_experts):
            idx, top_x = torch.where(expert_mask[expert_idx])
            if top_x.numel() == 0:
                continue  # (transformers runs the empty GEMMs; the result is the same)
            current_state = hidden_states[None, top_x].reshape(-1, self.hidden_dim)
            current = self.experts[expert_idx](current_state) * routing_weights[top_x, idx, None]
            final_hidden_states.index_add_(0, top_x, current.to(hidden_states.dtype))
        return final_hidden_states.reshape(shape), router_logits


def make_inputs(block, tokens, gen, avoid_experts=()):
    """x [T, H] ~ N(0, 1), each row resampled until its routing is unambiguous and avoids
    `avoid_experts` in its top k."""
    rows = []
    with torch.no_grad():
        while len(rows) < tokens:
            x = torch.randn(1, block.hidden_dim, generator=gen)
            probs = F.softmax(block.gate(x), dim=1, dtype=torch.float)[0]
            top = torch.topk(probs, min(block.top_k + 1, block.num_experts))
            chosen = top.indices[: block.top_k].tolist()
            if any(e in avoid_experts for e in chosen):
                continue
            if block.top_k < block.num_experts:
                kth, nxt = top.values[block.top_k - 1].item(), top.values[block.top_k].item()
                if (kth - nxt) < MIN_GAP * kth:
                    continue
            gaps = top.values[:-1] - top.values[1:]  # order inside the top k must be stable too
            if block.top_k > 1 and gaps[: block.top_k - 1].min().item() < MIN_GAP * top.values[0].item():
                continue
            rows.append(x)
    return torch.cat(rows, 0)


def build_case(name, kind, tokens, hidden, inter, experts, top_k, renormalize, empty, gen):
    block = MixtralSparseMoeBlock(hidden, inter, experts, top_k, renormalize, kind)
    # nn.Linear's own init (uniform ±1/sqrt(fan_in)) drawn from our generator.
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, nn.Linear):
                bound = 1.0 / (m.in_features ** 0.5)
                for p in (m.weight, m.bias):
                    if p is not None:
                        p.copy_(torch.rand(p.shape, generator=gen) * 2 * bound - bound)
    x = make_inputs(block, tokens, gen, avoid_experts=empty)
    with torch.no_grad():
        y, logits = block(x)
        _, weights, selected = block.route(x)
    # Independent check of the HF loop: per token, in float64, sum_j w_j * expert_j(x_t).
    with torch.no_grad():
        ref = torch.zeros(tokens, hidden, dtype=torch.float64)
        experts64 = [ex.double() for ex in copy.deepcopy(block.experts)]
        for r in range(tokens):
            for j in range(top_k):
                e = selected[r, j].item()
                ref[r] += weights[r, j].double() * experts64[e](x[r].double())
    err = (ref - y.double()).abs().max().item()
    assert err < 1e-5, f"{name}: HF loop differs from the per-token reference by {err}"
    counts = torch.bincount(selected.flatten(), minlength=experts).tolist()
    assert all(counts[e] == 0 for e in empty), counts

    t = {f"{name}.router": block.gate.weight, f"{name}.x": x, f"{name}.y": y,
         f"{name}.logits": logits, f"{name}.topk_idx": selected.to(torch.int32),
         f"{name}.topk_w": weights}
    for e, ex in enumerate(block.experts):
        if kind == "swiglu":
            t[f"{name}.w1.{e}"], t[f"{name}.w2.{e}"], t[f"{name}.w3.{e}"] = ex.w1.weight, ex.w2.weight, ex.w3.weight
        else:
            t[f"{name}.w1.{e}"], t[f"{name}.w2.{e}"] = ex.fc1.weight, ex.fc2.weight
            t[f"{name}.b1.{e}"], t[f"{name}.b2.{e}"] = ex.fc1.bias, ex.fc2.bias
    meta = {f"{name}.tokens": tokens, f"{name}.hidden": hidden, f"{name}.inter": inter,
            f"{name}.experts": experts, f"{name}.top_k": top_k,
            f"{name}.renormalize": "true" if renormalize else "false",
            f"{name}.expert_kind": "swiglu" if kind == "swiglu" else "gelu_mlp",
            f"{name}.empty_experts": ",".join(str(e) for e in empty)}
    print(f"{name}: tokens per expert {counts}, |y| max {y.abs().max().item():.4f}, "
          f"vs float64 per-token reference {err:.2e}", file=sys.stderr)
    return {k: v.detach().contiguous() for k, v in t.items()}, {k: str(v) for k, v in meta.items()}


def save(tensors, metadata, path):
    """Writes the safetensors format by hand, then checks it with the official package.

    By hand because the package (0.8) serialises __metadata__ from a hash map, in a different
    order on every run; a committed golden file should come out byte-identical when rerun.
    """
    names = {torch.float32: "F32", torch.int32: "I32", torch.bfloat16: "BF16", torch.float16: "F16"}
    header, offset, blobs = {}, 0, []
    # Larger elements first, then by name: every tensor starts aligned to its element size.
    for k in sorted(tensors, key=lambda k: (-tensors[k].element_size(), k)):
        t = tensors[k]
        b = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()
        header[k] = {"dtype": names[t.dtype], "shape": list(t.shape),
                     "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    header["__metadata__"] = dict(sorted(metadata.items()))
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    try:
        from safetensors import safe_open
    except ImportError:
        print("safetensors package not installed: file not cross-checked", file=sys.stderr)
    else:
        with safe_open(tmp, framework="pt") as f:
            assert f.metadata() == metadata
            assert sorted(f.keys()) == sorted(tensors)
            for k in f.keys():
                assert torch.equal(f.get_tensor(k), tensors[k]), k
    os.replace(tmp, path)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "golden", "moe_golden.safetensors"))
    args = ap.parse_args()

    torch.set_num_threads(1)  # one summation order, so reruns give the same bytes
    gen = torch.Generator().manual_seed(SEED)
    tensors, metadata = {}, {}
    cases = [("swiglu", "swiglu", 37, 64, 48, 8, 2, True, ()),
             ("gelu", "gelu", 37, 64, 48, 8, 3, False, (7,)),
             ("swiglu_k3", "swiglu", 37, 64, 48, 8, 3, False, (7,))]
    for name, *spec in cases:
        t, m = build_case(name, *spec, gen=gen)
        tensors.update(t)
        metadata.update(m)
    metadata["cases"] = ",".join(c[0] for c in cases)
    metadata["generator"] = "python/make_golden_moe.py"
    metadata["seed"] = str(SEED)
    save(tensors, metadata, args.out)
    print(f"wrote {args.out}: {len(tensors)} tensors, {os.path.getsize(args.out)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
