"""advprune.attacks.pgd against torchattacks.PGD: same model, settings, precision and
data, in one run; median seconds over repeats and the robust accuracy of each.

    python bench/attack.py [--n 500] [--steps 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from advprune import attacks, models
from advprune.data import read_fashion_mnist


def trained_model(x: torch.Tensor, y: torch.Tensor, epochs: int = 2) -> torch.nn.Module:
    """A small CNN trained briefly (clean) so that robust accuracy means something."""
    torch.manual_seed(0)
    model = models.create("small-cnn")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        for i in range(0, len(y), 128):
            opt.zero_grad()
            F.cross_entropy(model(x[i : i + 128]), y[i : i + 128]).backward()
            opt.step()
    return model.eval()


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    fn()
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    import torchattacks

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="bench/results/attack.json")
    args = parser.parse_args()

    data = read_fashion_mnist()
    x_all = torch.from_numpy(data.images[:6000].copy()).permute(0, 3, 1, 2).float() / 255
    y_all = torch.from_numpy(data.labels[:6000].copy())
    model = trained_model(x_all[: -args.n], y_all[: -args.n])
    x, y = x_all[-args.n :], y_all[-args.n :]
    step = args.eps / 4
    rows = []
    for layout in ("contiguous", "channels_last"):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        m = model.to(memory_format=fmt)
        xs = x.contiguous(memory_format=fmt)
        torch.manual_seed(1)
        theirs = torchattacks.PGD(m, eps=args.eps, alpha=step, steps=args.steps, random_start=True)
        t_theirs, adv_theirs = timed(lambda theirs=theirs, xs=xs: theirs(xs, y), args.repeats)
        gen = torch.Generator().manual_seed(1)
        t_ours, adv_ours = timed(
            lambda m=m, xs=xs, g=gen: attacks.pgd(
                m, xs, y, eps=args.eps, step_size=step, steps=args.steps, generator=g
            ),
            args.repeats,
        )
        with torch.no_grad():
            acc_theirs = float((m(adv_theirs).argmax(1) == y).float().mean())
            acc_ours = float((m(adv_ours).argmax(1) == y).float().mean())
        rows.append(
            {
                "layout": layout,
                "torchattacks_s": t_theirs,
                "advprune_s": t_ours,
                "ratio": t_ours / t_theirs,
                "torchattacks_robust_acc": acc_theirs,
                "advprune_robust_acc": acc_ours,
            }
        )
        print(
            f"{layout:<14} torchattacks {t_theirs:.3f} s  advprune {t_ours:.3f} s  ratio {t_ours / t_theirs:.2f}  "
            f"robust acc {100 * acc_theirs:.1f}% vs {100 * acc_ours:.1f}%",
            flush=True,
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"n": args.n, "steps": args.steps, "eps": args.eps, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
