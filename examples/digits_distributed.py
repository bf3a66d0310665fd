"""The digits CNN under torchrun: the same script on one process or several (DDP; gloo on CPU, NCCL on GPUs).

It trains ``examples/digits.py``'s CNN on the same data with the same global batch: under torchrun each rank takes
``--batch-size / ranks`` samples a step (``batch_size`` is per rank in kiln), its own shard of every epoch, and
BatchNorm statistics are synchronised over the ranks, so two ranks take the same optimizer steps as one process and
reach the same accuracy. Evaluation is sharded and reduced; only rank 0 prints, records the run and registers.
Run it with:

    python examples/digits_distributed.py                                   # one process
    torchrun --standalone --nproc-per-node 2 examples/digits_distributed.py  # two ranks
"""

from __future__ import annotations

import argparse

import torch
from digits import digits_cnn, load_data

import kiln
import kiln.store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch: split over the ranks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-register", action="store_true")
    args = parser.parse_args()

    kiln.distributed.init()  # reads torchrun's environment; a no-op in a plain process
    ranks = kiln.distributed.world_size()
    if args.batch_size % ranks:
        raise SystemExit(f"--batch-size {args.batch_size} does not split evenly over {ranks} ranks")
    torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    train, val, test = load_data(args.seed)
    model = kiln.Model(digits_cnn(), loss="cross_entropy", optimizer="adamw", lr=3e-3, metrics=["accuracy"],
                       store=kiln.store.Store())  # fmt: skip
    model.fit(train, epochs=args.epochs, batch_size=args.batch_size // ranks, validation=val, lr_schedule="cosine",
              seed=args.seed, sync_batchnorm=True, run=f"digits-cnn-{ranks}-ranks", verbose=0)  # fmt: skip
    result = model.evaluate(test)  # each rank evaluates its shard; the results are summed over ranks
    if not kiln.distributed.is_rank_zero():
        return
    print(f"ranks {ranks}, global batch {model.fit_config['global_batch_size']}: test accuracy "
          f"{result['accuracy']:.4f}  test loss {result['loss']:.4f}")  # fmt: skip
    if not args.no_register:
        version = model.register("digits-ddp", description=f"digits CNN trained on {ranks} rank(s)")
        print(f"registered {version.reference} (run {model.run_id})")
        print(f"serve it:   kiln serve {version.reference}")


if __name__ == "__main__":
    main()
