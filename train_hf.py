"""Train kvcap: `python train_hf.py PRESET [--key value ...]` (or `kvcap-train`), also under `accelerate launch`.

PRESET is a YAML file or the name of one installed with kvcap: `demo`, `linear`, `mlp_2l`, `perceiver`,
`c_abstractor` (files in `kvcap/configs/`).

One `Trainer.train()` runs both stages (stage 1: projector, lr 1e-3, 2 epochs; stage 2: projector + LoRA,
lr 5e-5, 3 epochs). The language model is loaded in 4-bit NF4 with LoRA (r 16, alpha 32, dropout 0.05) and
gradient checkpointing; the frozen vision tower encodes every clip once into a feature cache. At every
evaluation a diversity monitor captions fixed validation clips and warns of mode collapse. The result,
`OUTPUT_DIR/final`, loads with `AutoModel.from_pretrained(dir, trust_remote_code=True)` and its processor with
`AutoProcessor`.
"""

from __future__ import annotations

import logging
import sys

from tqdm.contrib.logging import logging_redirect_tqdm

from kvcap.training.run import finish_run, prepare_run


def main(argv: list[str] | None = None) -> dict:
    """Prepare the data, train both stages, export `OUTPUT_DIR/final`, evaluate it; returns the final metrics."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # Log lines go through tqdm, so they are not glued to its progress bars.
    with logging_redirect_tqdm():
        run = prepare_run(argv)
        run.trainer.train(resume_from_checkpoint=run.training_args.resume_from_checkpoint)
        return finish_run(run)


def cli() -> int:
    """The `kvcap-train` console command: the same as `python train_hf.py`."""
    main(sys.argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(cli())
