"""End-to-end PGD adversarial training: advprune's Trainer with its defaults against a
plain PyTorch loop in the style of fast_adversarial's train_pgd.py (float32, contiguous,
loss.backward() for the attack gradient), same model, data, PGD steps and epochs, in
one run; then clean and PGD-20 accuracy of both, and the Trainer's overhead: epoch time
over (steps + 1) x the model's measured forward+backward time in the same precision
and layout. The plain loop runs first, with glibc's default malloc as a user's loop has it;
the Trainer then tunes the allocator (RunConfig.tune_cpu_allocator, process-wide; not with
--default-malloc), and the plain loop runs once more (second in its process: a warm heap too).

    python bench/train.py [--n 10000] [--epochs 1] [--steps 3]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eval-n", type=int, default=1000)
    parser.add_argument("--default-malloc", action="store_true", help="the Trainer leaves malloc as it is")
    parser.add_argument("--out", default="bench/results/train.json")
    args = parser.parse_args()
    alpha = args.eps / 4

    data = read_fashion_mnist()
    test = read_fashion_mnist(train=False)
    train = from_arrays(data.images[: args.n].copy(), data.labels[: args.n].copy())
    x_all = torch.from_numpy(train.images).permute(0, 3, 1, 2).float().div_(255).contiguous()
    y_all = torch.from_numpy(train.labels)
    x_test = torch.from_numpy(test.images[: args.eval_n].copy()).permute(0, 3, 1, 2).float() / 255
    y_test = torch.from_numpy(test.labels[: args.eval_n].copy())

    def plain_run() -> tuple[torch.nn.Module, list[float]]:
        torch.manual_seed(0)
        plain = models.create("small-cnn")
        opt = torch.optim.SGD(plain.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
        seconds = [
            plain_pgd_epoch(plain, opt, x_all, y_all, eps=args.eps, alpha=alpha, steps=args.steps,
                            batch_size=args.batch_size, generator=torch.Generator().manual_seed(e))
            for e in range(args.epochs)
        ]  # fmt: skip
        return plain, seconds

    plain, plain_s = plain_run()
    torch.manual_seed(0)
    ours = models.create("small-cnn")
    trainer = Trainer(
        ours,
        AttackConfig("pgd", eps=args.eps, step_size=alpha, steps=args.steps),
        epochs=args.epochs,
        optim=OptimConfig(lr=0.05, schedule="constant"),
        run=RunConfig(device="cpu", quiet=True, tune_cpu_allocator=not args.default_malloc),
    )
    ours_s = []
    loader = make_loader(train, backend="memory", batch_size=args.batch_size, channels_last=True)
    for epoch in range(args.epochs):
        trainer.epochs = epoch + 1
        t0 = time.perf_counter()
        trainer.fit(loader)
        ours_s.append(time.perf_counter() - t0)
    _, plain_again_s = plain_run()  # the same loop again (under the tuning, unless --default-malloc)
    per_batch = fwd_bwd_seconds(
        models.create("small-cnn"),
        x_all[: args.batch_size],
        y_all[: args.batch_size],
        trainer.memory_format or torch.contiguous_format,
        trainer.amp_dtype,
    )
    batches = -(-args.n // args.batch_size)
    ideal = (args.steps + 1) * per_batch * batches
    res_plain = evaluate(plain, x_test, y_test, attack="pgd", eps=args.eps, steps=20)
    res_ours = evaluate(trainer.model, x_test, y_test, attack="pgd", eps=args.eps, steps=20)
    result = {
        "n": args.n,
        "epochs": args.epochs,
        "steps": args.steps,
        "amp": str(trainer.amp_dtype),
        "channels_last": trainer.memory_format == torch.channels_last,
        "plain_epoch_s": statistics.median(plain_s),
        "advprune_epoch_s": statistics.median(ours_s),
        "time_ratio": statistics.median(ours_s) / statistics.median(plain_s),
        "allocator_tuned": cpu_allocator_tuned(),
        "plain_again_epoch_s": statistics.median(plain_again_s),
        "time_ratio_vs_plain_again": statistics.median(ours_s) / statistics.median(plain_again_s),
        "ideal_epoch_s": ideal,
        "trainer_overhead": statistics.median(ours_s) / ideal,
        "plain_clean_acc": res_plain["clean_acc"],
        "plain_pgd20_acc": res_plain["robust_acc"],
        "advprune_clean_acc": res_ours["clean_acc"],
        "advprune_pgd20_acc": res_ours["robust_acc"],
    }
    for k, v in result.items():
        print(f"{k:<20} {v:.4f}" if isinstance(v, float) else f"{k:<20} {v}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
