"""FLORES-200 evaluation of a model or a training checkpoint, or a comparison of two runs:

    python evaluate.py --config=configs/eval.py --config.model=DIR \
        --config.data.flores=DIR --config.data.directions=eng_Latn-fra_Latn --config.out=DIR
    python evaluate.py --compare RUN_A RUN_B --out DIR

See docs/evaluate.md and `python evaluate.py --help`."""

import sys

from walar_jax.evaluation.cli import main

if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    # bad input or a service that would not start: the reason (and its log), not a traceback
    except (ValueError, FileNotFoundError, RuntimeError, TimeoutError) as err:
        sys.exit(f"evaluate.py: error: {err}")
