"""End-to-end PGD adversarial training: advprune's Trainer with its defaults against a
plain PyTorch loop in the style of fast_adversarial's train_pgd.py (float32, contiguous,
loss.backward() for the attack gradient), same model, data, PGD steps and epochs, in
one run; then clean and PGD-20 accuracy of both, and the Trainer's overhead: epoch time
over (steps + 1) x the model's measured forward+backward time in the same precision
and layout. The plain loop runs first, with glibc's default malloc as a user's loop has it;
the Trainer then tunes the allocator (RunConfig.tune_cpu_allocator, process-wide; not with
--default-malloc), and the plain loop runs once more (second in its process: a warm heap too).

Each seed (0..N-1) runs both sides from the same initial weights; accuracies are given per seed and as
mean ± std over the seeds (one epoch's accuracy varies by several points between seeds), epoch times as
medians over all the seeds' epochs. `--amp none` trains the Trainer in float32, to separate what bfloat16
does to accuracy from what the rest of the Trainer does.

n defaults to whole batches (10,240 = 80 x 128): a short last batch makes a full-size step in the plain loop
(the mean over its few samples) but a proportionate one in the Trainer (its sum over the batch size), and that
one step, the last before evaluation, cost the plain loop about 8 points after one epoch on 10,000 images (3
seeds, 2026-12-06); with whole batches both loops take the same steps and must reach the same accuracy.

    python bench/train.py [--n 10240] [--epochs 1] [--steps 3] [--seeds 3] [--amp auto|none]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from advprune import AttackConfig, OptimConfig, RunConfig, Trainer, models
from advprune.cpu_allocator import cpu_allocator_tuned
from advprune.data import from_arrays, make_loader, read_fashion_mnist
from advprune.evaluate import evaluate


def plain_pgd_epoch(model, opt, x_all, y_all, *, eps, alpha, steps, batch_size, generator) -> float:
    """One epoch of fast_adversarial-style PGD training; returns its seconds."""
    start = time.perf_counter()
    order = torch.randperm(len(y_all), generator=generator)
    model.train()
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        x, y = x_all[idx], y_all[idx]
        delta = torch.empty_like(x).uniform_(-eps, eps)
        delta = (torch.clamp(x + delta, 0, 1) - x).requires_grad_(True)
        for _ in range(steps):
            loss = F.cross_entropy(model(x + delta), y)
            loss.backward()
            grad = delta.grad.detach()
            d = torch.clamp(delta + alpha * torch.sign(grad), -eps, eps)
            delta.data = torch.clamp(x + d, 0, 1) - x
            delta.grad.zero_()
        loss = F.cross_entropy(model(x + delta.detach()), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def fwd_bwd_seconds(model, x, y, memory_format, amp_dtype, repeats=10) -> float:
    """Median time of one forward + backward of a batch, in the Trainer's precision and layout."""
    model = model.to(memory_format=memory_format).train()
    x = x.contiguous(memory_format=memory_format)
    times = []
    for _ in range(repeats + 2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        times.append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    return statistics.median(times[2:])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10240, help="training images (whole batches by default)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eval-n", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3, help="runs of both sides (seeds 0..N-1: init, order, noise)")
    parser.add_argument("--amp", default="auto", help="the Trainer's precision: auto (its default) or none (float32)")
    parser.add_argument("--default-malloc", action="store_true", help="the Trainer leaves malloc as it is")
    parser.add_argument("--out", default="bench/results/train.json")
    args = parser.parse_args()
    if args.seeds < 1 or args.amp not in ("auto", "none"):
        parser.error(f"--seeds must be >= 1 and --amp auto or none, got {args.seeds} and {args.amp!r}")
    return args


def load_data(args: argparse.Namespace):
    """The first n Fashion-MNIST training images as a dataset and as float tensors, and eval_n test images."""
    data, test = read_fashion_mnist(), read_fashion_mnist(train=False)
    train = from_arrays(data.images[: args.n].copy(), data.labels[: args.n].copy())
    x_all = torch.from_numpy(train.images).permute(0, 3, 1, 2).float().div_(255).contiguous()
    x_test = torch.from_numpy(test.images[: args.eval_n].copy()).permute(0, 3, 1, 2).float() / 255
    return train, x_all, torch.from_numpy(train.labels), x_test, torch.from_numpy(test.labels[: args.eval_n].copy())


def plain_run(args: argparse.Namespace, seed: int, x_all, y_all) -> tuple[torch.nn.Module, list[float]]:
    """The plain loop's model and epoch seconds, from the same initial weights as the Trainer's of this seed."""
    torch.manual_seed(seed)
    plain = models.create("small-cnn")
    opt = torch.optim.SGD(plain.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    seconds = [
        plain_pgd_epoch(plain, opt, x_all, y_all, eps=args.eps, alpha=args.eps / 4, steps=args.steps,
                        batch_size=args.batch_size, generator=torch.Generator().manual_seed(1000 * seed + e))
        for e in range(args.epochs)
    ]  # fmt: skip
    return plain, seconds


def trainer_run(args: argparse.Namespace, seed: int, train) -> tuple[Trainer, list[float]]:
    """The Trainer with its defaults (but --amp and --default-malloc) and its epoch seconds."""
    torch.manual_seed(seed)
    trainer = Trainer(
        models.create("small-cnn"),
        AttackConfig("pgd", eps=args.eps, step_size=args.eps / 4, steps=args.steps),
        epochs=args.epochs,
        optim=OptimConfig(lr=0.05, schedule="constant"),
        run=RunConfig(
            device="cpu", seed=seed, quiet=True, amp=None if args.amp == "none" else args.amp,
            tune_cpu_allocator=not args.default_malloc,
        ),
    )  # fmt: skip
    loader = make_loader(train, backend="memory", batch_size=args.batch_size, channels_last=True, seed=seed)
    seconds = []
    for epoch in range(args.epochs):
        trainer.epochs = epoch + 1
        t0 = time.perf_counter()
        trainer.fit(loader)
        seconds.append(time.perf_counter() - t0)
    return trainer, seconds


SIDES = ("plain", "advprune")  # the result's key prefixes, as for the epoch times


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    args = parse_args()
    train, x_all, y_all, x_test, y_test = load_data(args)
    times: dict[str, list[float]] = {"plain": [], "advprune": [], "plain_again": []}
    accuracy: dict[str, list[float]] = {f"{side}_{kind}": [] for side in SIDES for kind in ("clean", "pgd20")}
    for seed in range(args.seeds):
        # the plain loop first in its process (glibc's malloc as a user's loop has it, until the Trainer tunes it)
        plain, plain_s = plain_run(args, seed, x_all, y_all)
        trainer, ours_s = trainer_run(args, seed, train)
        _, plain_again_s = plain_run(args, seed, x_all, y_all)  # under the tuning, unless --default-malloc
        times["plain"] += plain_s
        times["advprune"] += ours_s
        times["plain_again"] += plain_again_s
        for side, model in (("plain", plain), ("advprune", trainer.model)):
            res = evaluate(model, x_test, y_test, attack="pgd", eps=args.eps, steps=20)
            accuracy[f"{side}_clean"].append(res["clean_acc"])
            accuracy[f"{side}_pgd20"].append(res["robust_acc"])
    per_batch = fwd_bwd_seconds(
        models.create("small-cnn"),
        x_all[: args.batch_size],
        y_all[: args.batch_size],
        trainer.memory_format or torch.contiguous_format,
        trainer.amp_dtype,
    )
    ideal = (args.steps + 1) * per_batch * -(-args.n // args.batch_size)
    epoch_s = {side: statistics.median(seconds) for side, seconds in times.items()}
    result = {
        "n": args.n,
        "epochs": args.epochs,
        "steps": args.steps,
        "seeds": args.seeds,
        "last_batch": args.n % args.batch_size or args.batch_size,  # short: the loops' last steps differ
        "amp": str(trainer.amp_dtype),
        "channels_last": trainer.memory_format == torch.channels_last,
        "plain_epoch_s": epoch_s["plain"],
        "advprune_epoch_s": epoch_s["advprune"],
        "time_ratio": epoch_s["advprune"] / epoch_s["plain"],
        "allocator_tuned": cpu_allocator_tuned(),
        "plain_again_epoch_s": epoch_s["plain_again"],
        "time_ratio_vs_plain_again": epoch_s["advprune"] / epoch_s["plain_again"],
        "ideal_epoch_s": ideal,
        "trainer_overhead": epoch_s["advprune"] / ideal,
    }
    for key, values in accuracy.items():  # mean and std over the seeds, and each seed's figure
        result[f"{key}_acc"], result[f"{key}_acc_std"] = mean_std(values)
        result[f"{key}_acc_per_seed"] = values
    for k, v in result.items():
        print(f"{k:<28} {v:.4f}" if isinstance(v, float) else f"{k:<28} {v}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
