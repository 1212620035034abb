"""Benchmark of advprune's fused ops against the eager PyTorch composite and
torch.compile of that composite, measured in one run.

Each case: median milliseconds over many repetitions after warm-up, speed-up
ratios, and the achieved bandwidth against a tensor copy of the same size
measured in the same run. On a GPU also each op's and the copy's own kernel time (calls replayed from a
CUDA graph: no launch or host work), the bandwidth figure without the call's overhead. On a GPU each op and
its copy cycle through copies of their operands that together exceed the L2 cache (ROTATE_BYTES), so that
every size measures memory, not the cache (one buffer replayed stays in an H200's 60 MB L2). A table on
screen, JSON to a file.

    python bench/ops.py [--device cpu|cuda|all] [--out bench/results/ops-cpu.json] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import advprune
from advprune import ops

# --------------------------------------------------------------- composites

EPS, STEP = 8 / 255, 2 / 255  # the linf PGD setting of CIFAR-10 training
SYNCING_OPS = {"scores+check"}  # a host sync in every call: no CUDA graph can hold it
ROTATE_BYTES = 256 * 2**20  # on a GPU, operand copies cycled through per case: over 4x an H100's or H200's L2
MAX_COPIES = 64


def pgd_eager(x_adv, grad, x_nat, eps: float, step: float):
    """The PGD step as torchattacks writes it."""
    x_adv = x_adv + step * grad.sign()
    delta = torch.clamp(x_adv - x_nat, min=-eps, max=eps)
    return torch.clamp(x_nat + delta, min=0, max=1)


def project_eager(x_adv, x_nat, eps: float):
    return torch.clamp(x_nat + torch.clamp(x_adv - x_nat, min=-eps, max=eps), min=0, max=1)


def scores_eager(logits, labels):
    """The same six scores from standard ops."""
    z = logits.float()
    logp = torch.log_softmax(z, dim=1)
    p = logp.exp()
    loss = F.nll_loss(logp, labels, reduction="none")
    z_y = z.gather(1, labels[:, None])[:, 0]
    other = z.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
    el2n = (p - F.one_hot(labels, z.shape[1])).norm(dim=1)
    entropy = -(p * logp).sum(dim=1)
    confidence = p.gather(1, labels[:, None])[:, 0]
    correct = z.argmax(dim=1) == labels
    return loss, z_y - other, el2n, entropy, confidence, correct


def unchecked_scores(logits, labels):
    """sample_scores as the Trainer calls it: labels known to lie in [0, C), no range check."""
    return ops.sample_scores(logits, labels, check_labels=False)


def kl_eager(p, q):
    return F.kl_div(torch.log_softmax(q, 1), torch.log_softmax(p, 1), reduction="none", log_target=True).sum(1)


# ------------------------------------------------------------------- timing


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], object], device: str, *, min_reps: int, min_seconds: float) -> float:
    """Median time of one call of fn in ms, after warm-up, over at least min_reps samples and min_seconds.
    On CUDA a sample is a batch of back-to-back calls between two events (about a millisecond's worth), so
    that the figure is the kernels' time rather than one call's launch and synchronisation latency (the
    first GPU check timed single calls: sample_scores' 50 µs were mostly latency)."""
    for _ in range(3):
        fn()
    sync(device)
    calls = _calls_per_sample(fn) if device == "cuda" else 1
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - started < min_seconds:
        times.append(_time_calls(fn, device, calls) / calls)
        if len(times) >= 2000:
            break
    return 1e3 * statistics.median(times)


def _time_calls(fn: Callable[[], object], device: str, calls: int) -> float:
    """Seconds for `calls` back-to-back calls of fn: CUDA events on the GPU, the wall clock on the CPU."""
    if device != "cuda":
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return time.perf_counter() - t0
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / 1e3


def _calls_per_sample(fn: Callable[[], object]) -> int:
    """Back-to-back calls that take about a millisecond of GPU time (1 to 1000)."""
    one = _time_calls(fn, "cuda", 10) / 10
    return max(1, min(1000, round(1e-3 / max(one, 1e-6))))


def graph_ms(fn: Callable[[], object], *, min_reps: int, min_seconds: float) -> float | None:
    """The GPU's own milliseconds for one call of fn: back-to-back calls captured in one CUDA graph and replayed
    between events, so that no launch or host work (Python, argument checks, allocation) is in the figure;
    that is what a bandwidth floor is about. None where fn cannot be captured (a host sync inside it)."""
    calls = _calls_per_sample(fn)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture, as torch.cuda.graphs asks
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
    except RuntimeError:
        return None
    return median_ms(graph.replay, "cuda", min_reps=min_reps, min_seconds=min_seconds) / calls


def rotating(operands: tuple, copies: int) -> Callable[[], tuple]:
    """A function that returns `copies` independent copies of the operands in turn (the first: themselves)."""
    sets = [operands] + [tuple(t.clone() for t in operands) for _ in range(copies - 1)]
    turn = itertools.cycle(sets)
    return lambda: next(turn)


def run_case(name, shape, dtype, device, moved_bytes, fused, eager, args, reps):
    """Times one op three ways plus a copy of the same size; returns a result row."""
    copies = min(MAX_COPIES, -(-ROTATE_BYTES // moved_bytes)) if device == "cuda" else 1
    args = rotating(args(), copies)
    compiled = torch.compile(eager)
    repeats = dict(min_reps=reps, min_seconds=0.2 if reps < 20 else 0.5)
    kw = dict(device=device, **repeats)
    t_eager = median_ms(lambda: eager(*args()), **kw)
    t_compile = median_ms(lambda: compiled(*args()), **kw)
    t_fused = median_ms(lambda: fused(*args()), **kw)
    src = torch.empty(moved_bytes // 4 // 2, dtype=torch.float32, device=device).uniform_()
    copy_args = rotating((torch.empty_like(src), src), copies)

    def copy():  # moves the same number of bytes
        dst, source = copy_args()
        return dst.copy_(source)

    t_copy = median_ms(copy, **kw)
    row = {
        "op": name,
        "shape": list(shape),
        "dtype": str(dtype).replace("torch.", ""),
        "device": device,
        "eager_ms": t_eager,
        "compile_ms": t_compile,
        "advprune_ms": t_fused,
        "copy_ms": t_copy,
        "operand_copies": copies,
        "speedup_vs_eager": t_eager / t_fused,
        "speedup_vs_compile": t_compile / t_fused,
        "advprune_GBps": moved_bytes / t_fused / 1e6,
        "copy_GBps": moved_bytes / t_copy / 1e6,
    }
    row["fraction_of_copy_bandwidth"] = row["advprune_GBps"] / row["copy_GBps"]
    if device == "cuda" and name not in SYNCING_OPS:
        graph_fused = graph_ms(lambda: fused(*args()), **repeats)
        graph_copy = graph_ms(copy, **repeats)
        if graph_fused is not None and graph_copy is not None:
            row.update(graph_advprune_ms=graph_fused, graph_copy_ms=graph_copy)
            row["graph_fraction_of_copy_bandwidth"] = graph_copy / graph_fused
    return row


def pgd_cases(device, quick):
    shapes = [(512, 3, 32, 32)] if quick else [(512, 3, 32, 32), (128, 3, 224, 224)]
    for shape in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            gen = torch.Generator().manual_seed(0)
            x_nat = torch.rand(shape, generator=gen).to(device=device, dtype=dtype)
            grad = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
            x_adv = (x_nat + 0.01 * grad).clamp(0, 1)
            nbytes = x_nat.numel() * x_nat.element_size()

            def fused(x, g, n):
                return ops.pgd_step_(x, g, n, eps=EPS, step_size=STEP)

            tensors = (x_adv, grad, x_nat)
            yield (
                "pgd_step_ linf",
                shape,
                dtype,
                4 * nbytes,
                fused,
                lambda x, g, n: pgd_eager(x, g, n, EPS, STEP),
                lambda t=tensors: t,
            )
            if dtype == torch.float32:
                yield (
                    "project_ linf",
                    shape,
                    dtype,
                    3 * nbytes,
                    lambda x, n: ops.project_(x, n, eps=EPS),
                    lambda x, n: project_eager(x, n, EPS),
                    lambda t=tensors: (t[0], t[2]),
                )


def row_cases(device, quick):
    sizes = [(512, 10), (50000, 10)] if quick else [(512, 10), (50000, 10), (4096, 1000), (65536, 100)]
    for n, c in sizes:
        gen = torch.Generator().manual_seed(1)
        logits = (3 * torch.randn(n, c, generator=gen)).to(device)
        labels = torch.randint(0, c, (n,), generator=gen).to(device)
        # logits read once, labels read once, five float32 and one bool written
        moved = logits.numel() * 4 + n * 8 + n * (5 * 4 + 1)
        operands = (logits, labels)
        # the Trainer's call: its labels are known to lie in [0, C), so no range check (a host sync on a GPU)
        yield (
            "sample_scores",
            (n, c),
            torch.float32,
            moved,
            unchecked_scores,
            scores_eager,
            lambda operands=operands: operands,
        )
        if n == 50000:  # what the default range check costs a caller, at one size
            yield (
                "scores+check",
                (n, c),
                torch.float32,
                moved,
                ops.sample_scores,
                scores_eager,
                lambda operands=operands: operands,
            )
    for n, c in [(512, 10)] if quick else [(512, 10), (4096, 1000)]:
        gen = torch.Generator().manual_seed(2)
        p = torch.randn(n, c, generator=gen).to(device)
        q = torch.randn(n, c, generator=gen).to(device)
        yield (
            "kl_rows",
            (n, c),
            torch.float32,
            2 * p.numel() * 4 + n * 4,
            ops.kl_rows,
            kl_eager,
            lambda p=p, q=q: (p, q),
        )


def layer_fwd_bwd(pool: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A layer as a step runs it (the pooling, the first convolution): the forward and the input gradient of a
    given output gradient."""

    def step(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        leaf = x.detach().requires_grad_(True)
        return torch.autograd.grad(pool(leaf), leaf, grad)[0]

    return step


def pool_cases(device, quick):
    """The small CNN's two poolings at batch 128, forward and backward (CPU only: elsewhere advprune's
    pooling is max_pool2d itself)."""
    if device != "cpu":
        return
    for shape in [(128, 32, 28, 28)] if quick else [(128, 32, 28, 28), (128, 64, 14, 14)]:
        for dtype in (torch.float32, torch.bfloat16):
            gen = torch.Generator().manual_seed(3)
            x = torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
            grad = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, generator=gen).to(dtype)
            grad = grad.contiguous(memory_format=torch.channels_last)
            # x read, pooled values and window bytes written; grad and window bytes read, grad_in written
            moved = 2 * x.nbytes + 2 * grad.nbytes + 2 * grad.numel()
            yield (
                "max_pool2x2",
                shape,
                dtype,
                moved,
                layer_fwd_bwd(ops.max_pool2x2),
                layer_fwd_bwd(lambda t: F.max_pool2d(t, 2)),
                lambda x=x, grad=grad: (x, grad),
            )


def first_conv_cases(device, quick):
    """The small CNN's first convolution (one input channel, 32 out, 3x3) as an attack step runs it, weights
    frozen: forward and input gradient at batch 250, the evaluation's batch, channels_last as advprune's models
    run and contiguous (first_conv_nchw) as a caller's may (CPU only: elsewhere it is conv2d)."""
    if device != "cpu":
        return
    layouts = {"first_conv": torch.channels_last, "first_conv_nchw": torch.contiguous_format}
    for (name, fmt), dtype in itertools.product(layouts.items(), (torch.float32, torch.bfloat16)):
        if quick and (dtype != torch.float32 or name != "first_conv"):
            continue
        gen = torch.Generator().manual_seed(4)
        x = torch.rand(250, 1, 28, 28, generator=gen).to(dtype).contiguous(memory_format=fmt)
        weight, bias = torch.randn(32, 1, 3, 3, generator=gen).to(dtype), torch.randn(32, generator=gen).to(dtype)
        grad = torch.randn(250, 32, 28, 28, generator=gen).to(dtype).contiguous(memory_format=fmt)
        yield (
            name,
            tuple(grad.shape),
            dtype,
            2 * x.nbytes + 2 * grad.nbytes,  # x read, out written; grad read, grad_in written
            layer_fwd_bwd(lambda t, w=weight, b=bias: ops.one_channel_conv2d(t, w, b, padding=(1, 1))),
            layer_fwd_bwd(lambda t, w=weight, b=bias: F.conv2d(t, w, b, padding=1)),
            lambda x=x, grad=grad: (x, grad),
        )
    yield from first_block_cases(quick)
    yield from second_block_cases(quick)


def first_block_cases(quick):
    """The small CNN's first convolution and pooling in one kernel (channels_last weights, frozen) against
    max_pool2d(conv2d): forward and input gradient at batch 250."""
    for dtype in (torch.float32,) if quick else (torch.float32, torch.bfloat16):
        gen = torch.Generator().manual_seed(5)
        x = torch.rand(250, 1, 28, 28, generator=gen).to(dtype)
        weight = torch.randn(32, 1, 3, 3, generator=gen).to(dtype).to(memory_format=torch.channels_last)
        bias = torch.randn(32, generator=gen).to(dtype)
        grad = torch.randn(250, 32, 14, 14, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
        yield (
            "first_block",
            tuple(grad.shape),
            dtype,
            2 * x.nbytes + 2 * grad.nbytes,  # x read, out written; grad read, grad_in written
            layer_fwd_bwd(lambda t, w=weight, b=bias: ops.one_channel_conv_max_pool2x2(t, w, b, (1, 1))),
            layer_fwd_bwd(lambda t, w=weight, b=bias: F.max_pool2d(F.conv2d(t, w, b, padding=1), 2)),
            lambda x=x, grad=grad: (x, grad),
        )


def second_block_cases(quick):
    """The small CNN's second convolution, pooling and ReLU (channels_last weights, frozen) against
    relu(max_pool2d(conv2d)): forward and input gradient at batch 250, the input gradient from the pooled one."""
    for dtype in (torch.float32,) if quick else (torch.float32, torch.bfloat16):
        gen = torch.Generator().manual_seed(6)
        x = torch.rand(250, 32, 14, 14, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
        weight = torch.randn(64, 32, 3, 3, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
        bias = torch.randn(64, generator=gen).to(dtype)
        grad = torch.randn(250, 64, 7, 7, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
        yield (
            "second_block",
            tuple(grad.shape),
            dtype,
            2 * x.nbytes + 2 * grad.nbytes,  # x read, out written; grad read, grad_in written
            layer_fwd_bwd(lambda t, w=weight, b=bias: ops.conv_max_pool2x2(t, w, b, (1, 1), relu=True)),
            layer_fwd_bwd(lambda t, w=weight, b=bias: F.relu(F.max_pool2d(F.conv2d(t, w, b, padding=1), 2))),
            lambda x=x, grad=grad: (x, grad),
        )


def fmt_table(rows) -> str:
    head = (
        f"{'op':<15} {'shape':<18} {'dtype':<9} {'eager ms':>9} {'compile ms':>10} {'advprune ms':>11} "
        f"{'x eager':>8} {'x compile':>9} {'GB/s':>7} {'% copy bw':>9} {'% (graph)':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        share = 100 * r["fraction_of_copy_bandwidth"]
        graph = r.get("graph_fraction_of_copy_bandwidth")
        graph_share = "-" if graph is None else f"{100 * graph:.0f}%"
        lines.append(
            f"{r['op']:<15} {'x'.join(map(str, r['shape'])):<18} {r['dtype']:<9} {r['eager_ms']:>9.3f} "
            f"{r['compile_ms']:>10.3f} {r['advprune_ms']:>11.3f} {r['speedup_vs_eager']:>8.1f} "
            f"{r['speedup_vs_compile']:>9.2f} {r['advprune_GBps']:>7.1f} {share:>8.0f}% {graph_share:>9}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    parser.add_argument("--out", default=None, help="JSON file (default bench/results/ops-<device>.json)")
    parser.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    parser.add_argument("--reps", type=int, default=30, help="at least this many timed runs per measurement")
    args = parser.parse_args()
    if not ops.extension_loaded():
        raise SystemExit(f"advprune's compiled extension is not loaded: {advprune.build_info()['extension_error']}")
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            raise SystemExit("--device cuda: no CUDA device is available")
        devices.remove("cuda")
    for device in devices:
        rows = []
        cases = (pgd_cases, row_cases, pool_cases, first_conv_cases)
        for case in (case for make in cases for case in make(device, args.quick)):
            name, shape, dtype, moved, fused, eager, make_args = case
            rows.append(run_case(name, shape, dtype, device, moved, fused, eager, make_args, args.reps))
            print(fmt_table(rows[-1:]).splitlines()[-1], flush=True)
        machine = (
            torch.cuda.get_device_name()
            if device == "cuda"
            else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        )
        print(f"\n{device}: {machine}, torch {torch.__version__}\n{fmt_table(rows)}\n")
        out = Path(args.out or f"bench/results/ops-{device}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"machine": machine, "build": advprune.build_info(), "rows": rows}, indent=1))
        tmp.replace(out)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
