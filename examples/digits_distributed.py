"""Distributed: the digits CNN under torchrun, the same script on one process or several (DDP; gloo on CPU).

The CNN of [examples/digits.py](examples/digits.py) (imported from it) on the same data with the same global batch.
`batch_size` is per rank in kiln, so under `torchrun` each rank takes `--batch-size / ranks` samples a step, its own
shard of every epoch: the global batch, and so the optimizer steps, are those of one process. BatchNorm statistics
are synchronised over the ranks (`sync_batchnorm=True`, kiln's own all-reduce on CPU). Evaluation is sharded and
summed over the ranks; only rank 0 prints, records the run and registers.

```bash
python examples/digits_distributed.py --no-register                      # one process
torchrun --standalone --nproc-per-node 2 examples/digits_distributed.py  # two CPU ranks (gloo)
```

```text
ranks 1, global batch 64: test accuracy 0.9916  test loss 0.0917
ranks 2, global batch 64: test accuracy 0.9861  test loss 0.0929
packaging for onnxruntime only; the torch runtime cannot rebuild it: torch.nn.modules.container:Sequential(**{})
builds a different module: missing ['0.bias', '0.weight', '1.bias', '1.num_batches_tracked', '1.running_mean'], ...
registered digits-ddp@1 (run 894805a2ca3c45ed9861a25e1e77e078)
serve it:   kiln serve digits-ddp@1
```

The two runs differ by two of the 359 test images after 15 epochs: the ranks sum their gradients in another order,
and AdamW turns those last-bit differences into small steps of their own. The "onnxruntime only" line appears
because after `fit(sync_batchnorm=True)` the module holds kiln's synchronised BatchNorm layers, which the
`nn.Sequential` rebuilder does not know; the ONNX graph serves it. More in [distributed.md](docs/distributed.md).

Tested: `tests/gallery/test_digits_distributed.py` (marked `distributed`) runs it with `--epochs 6` on one process
and on 2 ranks, and requires a test accuracy of at least 0.93 on one process, the 2 ranks within 0.02 of it, and
rank 0 alone registering.
"""

from __future__ import annotations

import torch
from digits import digits_cnn, load_data
from serving import example_parser

import kiln
import kiln.store


def main() -> None:
    parser = example_parser(__doc__, __file__)
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
