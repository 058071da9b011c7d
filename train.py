"""WALAR GRPO training: python train.py --config=configs/tiny.py --workdir=runs/tiny"""

import logging
import sys

from walar_jax import config as cfglib
from walar_jax.rl import trainer


def main(argv):
    config, flags = cfglib.parse(argv)
    workdir = flags.workdir or f"runs/{config.model.path.replace('/', '_')}"
    trainer.main(config, workdir)


if __name__ == "__main__":
    # force: absl (imported by ml_collections) has already put a WARNING-level handler on root
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every file it writes
    main(sys.argv)
