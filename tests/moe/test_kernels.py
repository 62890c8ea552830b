"""Triton dispatch kernels against the reference ops (unicl.moe.ops), in triton's CPU interpreter.

Triton picks interpreted or compiled code when a kernel -- including its own `tl.sum`, `tl.cumsum`
-- is defined, i.e. at import, so the interpreter must be switched on before triton is first
imported. The fixture `tk` does that when it may: triton not imported yet and no CUDA device (then
every triton kernel in this process could only ever run interpreted). It sets TRITON_INTERPRET=1
only while this module runs and restores the module cache afterwards. Where it may not (triton
already imported compiled, or a GPU process whose other tests compile kernels), one test re-runs
this file in a fresh interpreter process instead. The larger CUDA checks are in
test_kernels_gpu.py.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from unicl.moe import ops
from unicl.moe import plan as plan_mod

HAVE_TRITON = importlib.util.find_spec("triton") is not None
_KERNEL_MODULES = (
    "unicl.moe.kernels._common",
    "unicl.moe.kernels._triton_plan",
    "unicl.moe.kernels._gemm",
    "unicl.moe.kernels._rows",
    "unicl.moe.kernels.expert_ffn",
)
PARAMS = ("x", "weights", "w1", "b1", "w2", "b2")


def _interpret_here() -> bool:
    """Whether this process can run the kernels interpreted (see the module docstring)."""
    if "triton" not in sys.modules:
        return os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available()
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(sys.modules["triton.language"].sum, InterpretedFunction)


needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")


@pytest.fixture(scope="module")
def tk():
    """The kernel modules, defined under the interpreter; restores everything on teardown."""
    if not HAVE_TRITON:
        pytest.skip("triton is not installed")
    if not _interpret_here():
        pytest.skip("triton is compiled in this process: test_interpreter_subprocess runs these")
    pkg = importlib.import_module("unicl.moe.kernels")
    saved = {name: sys.modules.pop(name) for name in _KERNEL_MODULES if name in sys.modules}
    saved_attrs = {n: pkg.__dict__.get(n.rsplit(".", 1)[1]) for n in _KERNEL_MODULES}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        mods = [importlib.import_module(name) for name in _KERNEL_MODULES]
        yield SimpleNamespace(plan=mods[1], gemm=mods[2], rows=mods[3], ffn=mods[4])
    for name in _KERNEL_MODULES:
        sys.modules.pop(name, None)
        short = name.rsplit(".", 1)[1]
        if saved_attrs[name] is None:
            pkg.__dict__.pop(short, None)
        else:
            setattr(pkg, short, saved_attrs[name])
    sys.modules.update(saved)


@needs_triton
def test_interpreter_subprocess():
    """Runs this file in a fresh interpreter process when this one cannot interpret."""
    if _interpret_here():
        pytest.skip("the interpreter tests run in this process")
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "pytest", str(Path(__file__).resolve()), "-q", "-x"]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def make_routing(kind: str, n: int, k: int, e: int, gen: torch.Generator) -> torch.Tensor:
    """(N, K) int64 expert ids with distinct experts per token, shaped by `kind`."""
    if kind == "all_to_one":
        ids = torch.stack([torch.full((n,), (2 + j) % e) for j in range(k)], 1)
    else:
        scores = torch.rand(n, e, generator=gen)
        if kind == "zipf":  # heavy head: expert i drawn with weight 1 / (i + 1)
            scores = scores ** (torch.arange(e) + 1.0)
        if kind == "empty":  # odd experts are never chosen
            scores[:, 1::2] = -1.0
        ids = scores.topk(k, dim=1).indices
    ids = ids.clone()
    if kind == "dropped":  # a capacity limit dropped some slots, one token entirely
        drop = torch.rand(n, k, generator=gen) < 0.25
        ids[drop] = -1
        ids[0] = -1
    return ids


def make_inputs(n, d, f, e, k, dtype, gen, kind="balanced"):
    ids = make_routing(kind, n, k, e, gen)
    w = torch.rand(n, k, generator=gen)
    w = w / w.sum(1, keepdim=True)
    base = {
        "x": torch.randn(n, d, generator=gen),
        "weights": w,
        "w1": torch.randn(e, d, f, generator=gen) / d**0.5,
        "b1": torch.randn(e, f, generator=gen) * 0.1,
        "w2": torch.randn(e, f, d, generator=gen) / f**0.5,
        "b2": torch.randn(e, d, generator=gen) * 0.1,
    }
    return ids, {name: t.to(dtype) for name, t in base.items()}


def run_with_grads(fn, ids, tensors, grad_out, activation):
    leaves = {name: t.detach().clone().requires_grad_() for name, t in tensors.items()}
    out = fn(*(leaves[p] for p in PARAMS[:1]), ids, *(leaves[p] for p in PARAMS[1:]), activation)
    grads = torch.autograd.grad(out, [leaves[p] for p in PARAMS], grad_out.to(out.dtype))
    return out.detach(), dict(zip(PARAMS, grads))


def _call(fn):
    # ops.expert_ffn / triton_expert_ffn take (x, expert_ids, weights, w1, b1, w2, b2, act)
    return lambda x, ids, w, w1, b1, w2, b2, act: fn(x, ids, w, w1, b1, w2, b2, act)


def assert_close_rel(got, want, tol, what):
    """max |got - want| <= tol * max |want| (fp32 comparison; 16-bit inputs round per step)."""
    got, want = got.float(), want.float()
    scale = want.abs().max().clamp_min(1.0)
    err = (got - want).abs().max()
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol} x {scale:.3g}"


@pytest.mark.parametrize("kind", ["balanced", "zipf", "all_to_one", "empty", "dropped"])
@pytest.mark.parametrize("n,k,e", [(29, 2, 5), (1, 1, 3), (300, 2, 7)])
def test_routing_plan_matches_reference(tk, kind, n, k, e):
    gen = torch.Generator().manual_seed(n * 10 + e)
    ids = make_routing(kind, n, k, e, gen)
    got = tk.plan.routing_plan(ids, e)
    want = plan_mod.torch_dispatch_plan(ids, e)
    for field in ("offsets", "sorted_slot", "sorted_token", "slot_pos"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field
    ref = plan_mod.make_plan(ids, e)
    mine = got.to_routing_plan()
    for field in ("slots", "tokens", "counts", "offsets"):
        assert torch.equal(getattr(mine, field), getattr(ref, field)), field
    assert mine.counts_list == ref.counts_list and mine.dropless == ref.dropless


# (N, D, F, E, K, dtype, routing, activation, tolerance): none of N, D, F is a power of two
CASES = [
    (37, 24, 40, 5, 1, torch.float32, "balanced", "gelu", 1e-4),
    (37, 24, 40, 5, 2, torch.float32, "dropped", "gelu_tanh", 1e-4),
    (45, 20, 36, 6, 2, torch.float32, "empty", "relu", 1e-4),
    (33, 24, 40, 4, 2, torch.float32, "all_to_one", "gelu", 1e-4),
    (1, 24, 40, 5, 2, torch.float32, "balanced", "gelu", 1e-4),
    (37, 24, 40, 5, 2, torch.bfloat16, "zipf", "gelu", 2e-2),
    (37, 24, 40, 5, 2, torch.float16, "dropped", "gelu_tanh", 1e-2),
]


@pytest.mark.parametrize("n,d,f,e,k,dtype,kind,act,tol", CASES)
def test_expert_ffn_matches_reference(tk, n, d, f, e, k, dtype, kind, act, tol):
    gen = torch.Generator().manual_seed(7 * n + f)
    ids, tensors = make_inputs(n, d, f, e, k, dtype, gen, kind)
    grad_out = torch.randn(n, d, generator=gen)
    out, grads = run_with_grads(_call(tk.ffn.triton_expert_ffn), ids, tensors, grad_out, act)
    # the oracle: the reference ops in fp32 on the same (rounded) inputs
    f32 = {name: t.float() for name, t in tensors.items()}
    want, want_grads = run_with_grads(_call(ops.expert_ffn), ids, f32, grad_out, act)
    assert out.dtype == dtype and out.shape == (n, d)
    assert_close_rel(out, want, tol, "output")
    for name in PARAMS:
        assert grads[name].dtype == dtype, name
        assert_close_rel(grads[name], want_grads[name], tol, f"grad {name}")


def test_expert_ffn_without_biases_and_frozen_gates(tk):
    gen = torch.Generator().manual_seed(3)
    ids, t = make_inputs(23, 20, 28, 4, 2, torch.float32, gen, "dropped")
    x, w1, w2 = (t[p].clone().requires_grad_() for p in ("x", "w1", "w2"))
    out = tk.ffn.triton_expert_ffn(x, ids, t["weights"], w1, None, w2, None, "relu")
    zeros = {"b1": torch.zeros(4, 28), "b2": torch.zeros(4, 20)}
    x_r, w1_r, w2_r = (t[p].clone().requires_grad_() for p in ("x", "w1", "w2"))
    want = ops.expert_ffn(x_r, ids, t["weights"], w1_r, zeros["b1"], w2_r, zeros["b2"], "relu")
    torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, w1, w2], g)
    ref = torch.autograd.grad(want, [x_r, w1_r, w2_r], g)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_dispatch_and_combine_functions(tk):
    gen = torch.Generator().manual_seed(5)
    n, d, e, k = 31, 18, 5, 2
    ids = make_routing("dropped", n, k, e, gen)
    plan = tk.plan.routing_plan(ids, e)
    ref = plan.to_routing_plan()
    m = ref.slots.numel()
    x = torch.randn(n, d, generator=gen, requires_grad=True)
    xs = tk.ffn.dispatch(x, ids, plan)  # (S, D), rows past m unspecified
    torch.testing.assert_close(xs[:m], ops.gather(x, ref))
    g = torch.randn(m, d, generator=gen)
    (gx,) = torch.autograd.grad(xs[:m], x, g)
    torch.testing.assert_close(gx, torch.zeros(n, d).index_add(0, ref.tokens, g))
    y = torch.randn(n * k, d, generator=gen)
    y[m:] = float("nan")  # dropped rows must never be read
    y.requires_grad_()
    w = torch.rand(n, k, generator=gen, requires_grad=True)
    out = tk.ffn.weighted_combine(y, w, ids, plan)
    y_ref = y.detach()[:m].clone().requires_grad_()
    w_ref = w.detach().clone().requires_grad_()
    want = ops.combine(y_ref, ref, w_ref)
    torch.testing.assert_close(out, want)
    go = torch.randn(n, d, generator=gen)
    gy, gw = torch.autograd.grad(out, [y, w], go)
    gy_ref, gw_ref = torch.autograd.grad(want, [y_ref, w_ref], go)
    torch.testing.assert_close(gy[:m], gy_ref)
    torch.testing.assert_close(gw, gw_ref)


def attribute_setup(gen, n=67, a=6, e=5, k=2):
    attributes = torch.randint(0, a, (n,), generator=gen)
    attributes[attributes == 4] = 3  # attribute 4 has no token in this batch
    attr_experts = torch.rand(a, e, generator=gen).topk(k, dim=1).indices
    attr_experts[2, 1] = -1  # one attribute's second choice was dropped
    return attributes, attr_experts


def assert_same_routing(plan, ids, e):
    """`plan` routes exactly the slots of `ids`, grouped by expert (any order inside one)."""
    want = plan_mod.torch_dispatch_plan(ids, e)
    assert torch.equal(plan.offsets, want.offsets)
    bounds = plan.offsets.tolist()
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        got_slots = torch.sort(plan.sorted_slot[lo:hi]).values
        assert torch.equal(got_slots, torch.sort(want.sorted_slot[lo:hi]).values)
    slots = plan.sorted_slot.long()
    # a permutation of all slots, dropped ones last, with consistent token and inverse arrays
    assert torch.equal(torch.sort(slots).values, torch.arange(slots.numel()))
    assert bool((ids.reshape(-1)[slots[bounds[-1] :]] == -1).all())
    assert torch.equal(plan.sorted_token.long(), slots // ids.shape[1])
    assert torch.equal(plan.slot_pos[slots], torch.arange(slots.numel(), dtype=torch.int32))


def test_attribute_plan_reuse_reference():
    """The pure-PyTorch plan reuse (no interpreter): remap == routing the per-token ids."""
    gen = torch.Generator().manual_seed(11)
    attributes, attr_experts = attribute_setup(gen)
    aplan = plan_mod.build_attribute_plan(attributes, 6)
    assert torch.equal(aplan.counts, torch.bincount(attributes, minlength=6).int())
    ids = attr_experts[attributes]  # (N, K) what a per-token router would give
    plan = aplan.remap(attr_experts, 5)  # CPU tensors: the torch remap
    assert_same_routing(plan, ids, 5)
    # the reference FFN on the reused plan equals the reference FFN routing from scratch
    _, t = make_inputs(67, 20, 28, 5, 2, torch.float32, gen)
    leaves = [t[p].clone().requires_grad_() for p in PARAMS]
    out = ops._ExpertFFN.apply(*leaves, plan.to_routing_plan(), "gelu")
    want = ops.expert_ffn(leaves[0], ids, *leaves[1:], "gelu")
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, leaves, g), torch.autograd.grad(want, leaves, g)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_attribute_plan_reuse_triton(tk):
    gen = torch.Generator().manual_seed(12)
    attributes, attr_experts = attribute_setup(gen)
    aplan = plan_mod.build_attribute_plan(attributes, 6)
    got = tk.plan.triton_remap(aplan, attr_experts, 5)
    want = plan_mod.torch_remap(aplan, attr_experts, 5)
    for field in ("offsets", "sorted_slot", "sorted_token", "slot_pos"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field
    ids = attr_experts[attributes]
    _, tensors = make_inputs(67, 20, 28, 5, 2, torch.float32, gen)
    grad_out = torch.randn(67, 20, generator=gen)
    reuse = lambda x, i, w, w1, b1, w2, b2, act: tk.ffn.triton_expert_ffn(
        x, i, w, w1, b1, w2, b2, act, plan=got
    )
    out, grads = run_with_grads(reuse, ids, tensors, grad_out, "gelu")
    want_out, want_grads = run_with_grads(_call(ops.expert_ffn), ids, tensors, grad_out, "gelu")
    assert_close_rel(out, want_out, 1e-4, "output")
    for name in PARAMS:
        assert_close_rel(grads[name], want_grads[name], 1e-4, f"grad {name}")


def test_launchers_reject_bad_input(tk, monkeypatch):
    gen = torch.Generator().manual_seed(1)
    ids, t = make_inputs(9, 8, 12, 3, 2, torch.float32, gen)
    ffn = tk.ffn.triton_expert_ffn
    args = [t["x"], ids, t["weights"], t["w1"], t["b1"], t["w2"], t["b2"]]
    with pytest.raises(ValueError, match="w2"):
        ffn(*args[:5], t["w2"][:, :5], t["b2"])
    with pytest.raises(TypeError, match="expert_ids"):
        ffn(args[0], ids.float(), *args[2:])
    with pytest.raises(TypeError, match="w1"):
        ffn(*args[:3], t["w1"].double(), *args[4:])
    with pytest.raises(ValueError, match="activation"):
        ffn(*args, "swish")
    with pytest.raises(ValueError, match="plan"):
        ffn(*args, plan=tk.plan.routing_plan(ids, 4))
    with pytest.raises(ValueError, match="offsets"):
        tk.gemm.grouped_mm(t["x"], t["w1"], torch.zeros(3, dtype=torch.int32), 9)
    monkeypatch.delenv("TRITON_INTERPRET")  # compiled kernels need CUDA tensors
    with pytest.raises(ValueError, match="CUDA"):
        ffn(*args)


def test_import_without_triton():
    """`import unicl.moe` and the kernels package work when triton cannot be imported."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import unicl.moe, unicl.moe.kernels as k\n"
        "assert not k.available() and not k._triton_importable()\n"
        "assert 'unicl.moe.kernels._gemm' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
