"""Integrated gradients: ours against captum's on the same model, inputs, baseline and steps, in one run.

    python bench/explain/ig.py [--images 200] [--steps 50] [--epochs 1]

A small CNN (modelyard's default image net) is trained briefly on Fashion-MNIST; both
implementations attribute the predicted class's probability of the same test images
against a black baseline with Gauss-Legendre quadrature. Prints the largest difference
and the time ratio (ours / captum), best of 3: captum as the issue's peer runs it (1,000
rows per pass), and captum with the rows per pass ours picks by itself (a hand-tuned captum).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from modelyard.data import ImageSplit, load
from modelyard.explain import integrated_gradients
from modelyard.models import ImageNetConfig
from modelyard.train import fit_image


def best_of(fn, n: int = 3):
    times, out = [], None
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    from captum.attr import IntegratedGradients

    torch.set_num_threads(args.threads)
    data = load("fashion_mnist")
    train = ImageSplit(data.train.x[:10000], data.train.y[:10000])
    model = fit_image(train, data.valid, ImageNetConfig(max_epochs=args.epochs), classes=data.classes)
    x = data.test.x[: args.images]
    t_ours, ours = best_of(lambda: integrated_gradients(model, x, steps=args.steps))
    pixels = torch.from_numpy(x).float() / 255
    target = torch.from_numpy(ours.target)
    model.module.eval()
    ig = IntegratedGradients(lambda t: torch.softmax(model.module(t), dim=1))
    t_ref, ref = best_of(lambda: ig.attribute(pixels, baselines=torch.zeros_like(pixels), target=target,
                                              n_steps=args.steps, internal_batch_size=max(1, 50_000 // args.steps)))
    diff = float(np.abs(ours.values - ref.detach().numpy()).max())
    # captum again with the rows per pass ours chose (its internal_batch_size counts points):
    # what a captum user gets who tunes the batch by hand
    from modelyard.explain._gradients import _rows_per_pass

    rows = _rows_per_pass(model.module, [pixels], args.steps, image=True)
    t_tuned, _ = best_of(lambda: ig.attribute(pixels, baselines=torch.zeros_like(pixels), target=target,
                                              n_steps=args.steps, internal_batch_size=rows * args.steps))
    print(f"integrated gradients, {args.images} images 1x28x28, {args.steps} steps, {args.threads} thread(s)")
    print(f"  ours {t_ours:.3f} s  captum {t_ref:.3f} s  ratio {t_ours / t_ref:.2f}  max |diff| {diff:.2g}")
    print(f"  captum with ours' {rows} row(s) per pass {t_tuned:.3f} s  ratio {t_ours / t_tuned:.2f}")
    print(f"  completeness: max |delta| {np.abs(ours.delta).max():.2g}")


if __name__ == "__main__":
    main()
