#!/usr/bin/env python3
"""Export one training step of PyTorch models to memgraph-v1 (dev-only; needs torch, torchvision).

A training step is forward + loss + backward with parameter gradients as graph outputs,
traced to ATen ops with make_fx (eager order: the order autograd runs them in). Parameters and
module buffers are persistent; the input batch and labels are freeable inputs. Sizes come
from tensor metadata (numel x element size; a multi-output op produces the sum, its parts are
zero-size views). Views and in-place results are found from the op schema's alias
annotations and written as `view_of` with size 0 (in-place ops fold into their buffer).
Workspace is 0.

    python3 python/export_graph.py --out bench/graphs [--models resnet18,gpt] [--no-ac]
        [--compiled]

writes <model>-train.json.gz and <model>-train-ac.json.gz (activation checkpointing), and with
--compiled <model>-train-compiled.json.gz: torch.compile's AOT-autograd forward and backward
graphs after its min-cut rematerialisation partitioner, joined through the saved tensors.
Prints one JSON line per graph with the program-order peak from memgraph_sim.py.
"""
import argparse
import gzip
import json
import math
import operator
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import memgraph_sim  # noqa: E402


# ----------------------------------------------------------------------------- models
class Block(nn.Module):
    """Pre-norm transformer block; `moe` replaces the MLP by a Mixtral-style top-k MoE."""

    def __init__(self, d, heads, moe=None):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.heads = heads
        self.moe = moe
        if moe is None:
            self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        else:
            n_exp, self.top_k = moe
            self.gate = nn.Linear(d, n_exp, bias=False)
            self.w1 = nn.ModuleList(nn.Linear(d, 2 * d, bias=False) for _ in range(n_exp))
            self.w3 = nn.ModuleList(nn.Linear(d, 2 * d, bias=False) for _ in range(n_exp))
            self.w2 = nn.ModuleList(nn.Linear(2 * d, d, bias=False) for _ in range(n_exp))

    def attn(self, x, causal):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        if causal:
            mask = torch.ones(t, t, dtype=torch.bool).tril()
            att = att.masked_fill(~mask, float("-inf"))
        y = att.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))

    def mlp(self, x):
        h = self.ln2(x)
        if self.moe is None:
            return self.fc2(F.gelu(self.fc1(h)))
        b, t, d = h.shape
        flat = h.reshape(b * t, d)
        logits = self.gate(flat)
        weights, sel = torch.topk(logits.softmax(-1), self.top_k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        out = torch.zeros_like(flat)
        for e in range(len(self.w1)):
            tok, slot = torch.nonzero(sel == e, as_tuple=True)  # real tracing: shapes baked in
            if tok.numel() == 0:
                continue
            xe = flat[tok]
            ye = self.w2[e](F.silu(self.w1[e](xe)) * self.w3[e](xe))
            out = out.index_add(0, tok, ye * weights[tok, slot].unsqueeze(-1))
        return out.view(b, t, d)

    def forward(self, x, causal=True):
        x = x + self.attn(x, causal)
        return x + self.mlp(x)


class TinyLM(nn.Module):
    def __init__(self, vocab=512, d=128, heads=4, layers=4, seq=64, moe=None):
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, d), nn.Parameter(torch.zeros(seq, d))
        self.blocks = nn.ModuleList(Block(d, heads, moe) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)
        self.ac = False

    def forward(self, idx):
        x = self.emb(idx) + self.pos[: idx.shape[1]]
        for blk in self.blocks:
            x = checkpoint(blk, x, use_reentrant=False) if self.ac else blk(x)
        return self.head(self.ln(x))


class TinyViT(nn.Module):
    def __init__(self, img=32, patch=4, d=128, heads=4, layers=4, classes=10):
        super().__init__()
        self.patch = nn.Conv2d(3, d, patch, patch)
        self.cls, self.pos = nn.Parameter(torch.zeros(1, 1, d)), nn.Parameter(torch.zeros(1, (img // patch) ** 2 + 1, d))
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, classes)
        self.ac = False

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        for blk in self.blocks:
            x = checkpoint(blk, x, False, use_reentrant=False) if self.ac else blk(x, False)
        return self.head(self.ln(x)[:, 0])


def tv_model(name, **kw):
    import torchvision.models as tvm
    return getattr(tvm, name)(weights=None, **kw)


AC_UNITS = {
    # torchvision model -> attribute paths of the submodules to checkpoint (each unit's forward
    # is replaced by torch.utils.checkpoint of it)
    "resnet": ["layer1", "layer2", "layer3", "layer4"],
    "mobilenet_v2": ["features.*"],
    "squeezenet1_0": ["features.*"],
    "densenet121": ["features.*"],
    "swin_t": ["features.*"],
    "googlenet": ["inception3a", "inception3b", "inception4a", "inception4b", "inception4c",
                  "inception4d", "inception4e", "inception5a", "inception5b"],
    "inception_v3": ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                     "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"],
}


def apply_ac(net, name):
    """Activation checkpointing on a torchvision net; False if the model has no recipe.
    In-place ReLUs are made out-of-place: an in-place op on a checkpointed unit's input would
    break recomputation."""
    key = "resnet" if name.startswith("resnet") else name
    if key not in AC_UNITS:
        return False
    for m in net.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    units = []
    for path in AC_UNITS[key]:
        if path.endswith(".*"):
            units += list(net.get_submodule(path[:-2]).children())
        else:
            units.append(net.get_submodule(path))
    for u in units:
        if not any(True for _ in u.parameters()):
            continue  # pooling or activation: nothing worth recomputing
        orig = u.forward
        u.forward = lambda *a, _orig=orig: checkpoint(_orig, *a, use_reentrant=False)
    return True


MODELS = {
    # name: (constructor, input maker, loss kind)
    "resnet18": (lambda: tv_model("resnet18", num_classes=10), lambda: torch.randn(4, 3, 64, 64), "cls"),
    "resnet50": (lambda: tv_model("resnet50", num_classes=10), lambda: torch.randn(2, 3, 64, 64), "cls"),
    "mobilenet_v2": (lambda: tv_model("mobilenet_v2", num_classes=10), lambda: torch.randn(4, 3, 96, 96), "cls"),
    "squeezenet1_0": (lambda: tv_model("squeezenet1_0", num_classes=10), lambda: torch.randn(4, 3, 96, 96), "cls"),
    "googlenet": (lambda: tv_model("googlenet", num_classes=10, aux_logits=False, init_weights=False),
                  lambda: torch.randn(2, 3, 96, 96), "cls"),
    "inception_v3": (lambda: tv_model("inception_v3", num_classes=10, aux_logits=False, init_weights=False),
                     lambda: torch.randn(2, 3, 96, 96), "cls"),
    "densenet121": (lambda: tv_model("densenet121", num_classes=10), lambda: torch.randn(2, 3, 64, 64), "cls"),
    "vit_tiny": (lambda: TinyViT(), lambda: torch.randn(4, 3, 32, 32), "cls"),
    "swin_t": (lambda: tv_model("swin_t", num_classes=10), lambda: torch.randn(1, 3, 112, 112), "cls"),
    "gpt_small": (lambda: TinyLM(), lambda: torch.randint(0, 512, (2, 64)), "lm"),
    "moe_small": (lambda: TinyLM(moe=(8, 2)), lambda: torch.randint(0, 512, (2, 64)), "lm"),
}


# ----------------------------------------------------------------------------- tracing
def tensor_bytes(val):
    if isinstance(val, torch.Tensor):
        return val.numel() * val.element_size()
    if isinstance(val, (list, tuple)):
        return sum(tensor_bytes(v) for v in val)
    return 0


def alias_source(node):
    """The argument node a view / in-place op's result aliases, from the schema, or None."""
    if node.op == "call_function" and node.target is operator.getitem:
        return node.args[0]
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return None
    sets = set()
    for r in schema.returns:
        if r.alias_info is not None:
            sets |= set(r.alias_info.before_set)
    if not sets:
        return None
    for i, a in enumerate(schema.arguments):
        if a.alias_info is None or not (set(a.alias_info.before_set) & sets):
            continue
        val = node.args[i] if i < len(node.args) else node.kwargs.get(a.name)
        if isinstance(val, torch.fx.Node):
            return val
    return None


class MemGraphBuilder:
    def __init__(self, name):
        self.name = name
        self.nodes, self.outputs, self.persistent = [], [], []

    def add(self, name, op, inputs, size, view_of=None):
        nid = len(self.nodes)
        d = {"id": nid, "name": name, "op": op, "inputs": sorted(set(inputs)), "size": int(size)}
        if view_of is not None:
            d["view_of"] = view_of
            d["size"] = 0
            if view_of not in d["inputs"]:
                d["inputs"].append(view_of)
        self.nodes.append(d)
        return nid

    def add_fx(self, gm, placeholder_ids, prefix=""):
        """Adds the nodes of gm; placeholder_ids[i] is the node id of placeholder i. Returns
        the ids of the output node's arguments (flattened)."""
        ids = {}
        ph = 0
        outs = []
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                ids[node] = placeholder_ids[ph]
                ph += 1
            elif node.op == "output":
                flat, _ = torch.utils._pytree.tree_flatten(node.args[0])
                outs = [ids.get(a) if isinstance(a, torch.fx.Node) else None for a in flat]
            elif node.op == "call_function":
                ins = [ids[a] for a in node.all_input_nodes if a in ids]
                src = alias_source(node)
                val = node.meta.get("val")
                op = str(node.target) if node.target is not operator.getitem else "getitem"
                if src is not None and src in ids:
                    ids[node] = self.add(prefix + node.name, op, ins, 0, view_of=ids[src])
                else:
                    ids[node] = self.add(prefix + node.name, op, ins, tensor_bytes(val))
            else:
                raise ValueError(f"unexpected FX node {node.op}")
        return outs

    def to_json(self):
        return {"format": "memgraph-v1", "name": self.name, "nodes": self.nodes,
                "outputs": sorted(set(self.outputs)), "persistent": sorted(set(self.persistent))}


def train_step_fn(model, kind):
    names = [n for n, _ in model.named_parameters()]
    bnames = [n for n, _ in model.named_buffers()]

    def step(params, buffers, x, y):
        state = dict(zip(names, params))
        state.update(zip(bnames, buffers))
        out = torch.func.functional_call(model, state, (x,))
        if kind == "lm":
            loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        else:
            loss = F.cross_entropy(out, y)
        grads = torch.autograd.grad(loss, params)
        return loss, grads
    return step


def export_eager(name, ac):
    ctor, mk_input, kind = MODELS[name]
    torch.manual_seed(0)
    model = ctor()
    model.train()
    x = mk_input()
    y = torch.randint(0, 512 if kind == "lm" else 10, (x.shape[0], x.shape[1]) if kind == "lm" else (x.shape[0],))
    if ac:
        if hasattr(model, "ac"):
            model.ac = True
        elif not apply_ac(model, name):
            return None
    params = [p for _, p in model.named_parameters()]
    buffers = [b for _, b in model.named_buffers()]
    step = train_step_fn(model, kind)
    gm = make_fx(step, tracing_mode="real")(params, buffers, x, y)
    b = MemGraphBuilder(f"{name}-train{'-ac' if ac else ''}")
    ph = []
    for i in range(len(params) + len(buffers)):
        ph.append(b.add(f"param{i}", "param", [], tensor_bytes(params[i] if i < len(params) else buffers[i - len(params)])))
        b.persistent.append(ph[-1])
    ph.append(b.add("x", "input", [], tensor_bytes(x)))
    ph.append(b.add("y", "input", [], tensor_bytes(y)))
    outs = b.add_fx(gm, ph)
    b.outputs += [o for o in outs if o is not None]
    return b.to_json()


def export_compiled(name):
    """torch.compile's AOT forward/backward graphs (min-cut partitioner), joined."""
    from functorch.compile import make_boxed_func, min_cut_rematerialization_partition
    from torch._dynamo.backends.common import aot_autograd
    ctor, mk_input, kind = MODELS[name]
    torch.manual_seed(0)
    model = ctor()
    model.train()
    x = mk_input()
    y = torch.randint(0, 512 if kind == "lm" else 10, (x.shape[0], x.shape[1]) if kind == "lm" else (x.shape[0],))
    captured = {"fw": [], "bw": []}

    def grab(key):
        def compiler(gm, example_inputs):
            captured[key].append(gm)
            return make_boxed_func(gm.forward)
        return compiler

    backend = aot_autograd(fw_compiler=grab("fw"), bw_compiler=grab("bw"),
                           partition_fn=min_cut_rematerialization_partition)

    class WithLoss(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x, y):
            out = self.m(x)
            if kind == "lm":
                return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
            return F.cross_entropy(out, y)

    torch._dynamo.reset()
    cm = torch.compile(WithLoss(model), backend=backend, fullgraph=True, dynamic=False)
    loss = cm(x, y)
    loss.backward()
    if len(captured["fw"]) != 1 or len(captured["bw"]) != 1:
        raise RuntimeError(f"expected one forward and one backward graph, got {len(captured['fw'])}/{len(captured['bw'])}")
    fw, bw = captured["fw"][0], captured["bw"][0]
    b = MemGraphBuilder(f"{name}-train-compiled")
    ph = []
    for node in fw.graph.nodes:
        if node.op != "placeholder":
            continue
        val = node.meta.get("val")
        # Parameters and buffers are the placeholders that need grad or are module state;
        # dynamo lifts them as graph inputs ahead of the user inputs x and y.
        is_user = isinstance(val, torch.Tensor) and (val.shape == x.shape or val.shape == y.shape) \
            and not val.requires_grad and val.dtype in (x.dtype, y.dtype)
        ph.append(b.add(node.name, "input" if is_user else "param", [], tensor_bytes(val)))
        if not is_user:
            b.persistent.append(ph[-1])
    fw_outs = b.add_fx(fw, ph, prefix="fw_")
    n_bw_in = sum(1 for n in bw.graph.nodes if n.op == "placeholder")
    # Backward placeholders: the saved values (the forward's outputs after the user outputs),
    # then the tangents.
    n_saved = len(fw_outs) - 1
    bw_ph = []
    saved = fw_outs[1:]
    for i, node in enumerate(n for n in bw.graph.nodes if n.op == "placeholder"):
        if i < n_saved and i < n_bw_in - 1 and saved[i] is not None:
            bw_ph.append(saved[i])
        else:
            # The tangent (d loss / d loss) exists once the loss does.
            bw_ph.append(b.add(node.name, "tangent", [fw_outs[0]], tensor_bytes(node.meta.get("val"))))
    grads = b.add_fx(bw, bw_ph, prefix="bw_")
    b.outputs += [fw_outs[0]] + [g for g in grads if g is not None]
    return b.to_json()


def write(g, out_dir):
    path = os.path.join(out_dir, g["name"] + ".json.gz")
    text = json.dumps(g, separators=(",", ":")).encode()
    tmp = path + ".tmp"
    with gzip.GzipFile(tmp, "wb", mtime=0) as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/graphs")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--no-ac", action="store_true")
    ap.add_argument("--compiled", action="store_true")
    ap.add_argument("--compiled-only", action="store_true", help="only the torch.compile graphs")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(1)
    for name in a.models.split(","):
        variants = [("eager", False)] + ([] if a.no_ac else [("eager", True)])
        if a.compiled_only:
            variants = []
        if a.compiled or a.compiled_only:
            variants.append(("compiled", None))
        for kind, ac in variants:
            t0 = time.time()
            try:
                g = export_eager(name, ac) if kind == "eager" else export_compiled(name)
            except Exception as e:  # report and go on: one model failing should not stop the rest
                print(json.dumps({"model": name, "variant": kind, "ac": ac, "error": str(e)[:300]}), flush=True)
                continue
            if g is None:
                continue
            path = write(g, a.out)
            sim = memgraph_sim.simulate(g)
            print(json.dumps({"graph": g["name"], "path": path, "nodes": len(g["nodes"]),
                              "program_peak_bytes": sim["peak_bytes"],
                              "persistent_bytes": sim["persistent_bytes"],
                              "file_bytes": os.path.getsize(path), "seconds": round(time.time() - t0, 2)}),
                  flush=True)


if __name__ == "__main__":
    main()
