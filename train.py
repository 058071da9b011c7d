"""WALAR GRPO training: python train.py --config=configs/tiny.py --workdir=runs/tiny"""

import logging
import signal
import sys

from walar_jax import config as cfglib
from walar_jax.rl import train
from walar_jax.rl.plan import ConfigError


def main(argv):
    config, flags = cfglib.parse(argv)
    workdir = flags.workdir or f"runs/{config.model.path.replace('/', '_')}"
    try:
        train.main(config, workdir)
    except ConfigError as err:  # a value that cannot work: say which, no traceback
        sys.exit(f"train.py: config error: {err}")


if __name__ == "__main__":
    # force: absl (imported by ml_collections) has already put a WARNING-level handler on root
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every file it writes
    # SIGTERM unwinds like Ctrl-C: services stopped, weight segments and port files removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    main(sys.argv)
