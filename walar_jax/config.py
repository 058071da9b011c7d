"""Command-line configuration: `--config=configs/x.py[:arg]` plus `--config.a.b=value`.

The config file's `get_config(arg)` returns an ml_collections.ConfigDict; overrides of
keys that do not exist fail. The resolved config is logged and saved in the workdir.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

log = logging.getLogger(__name__)


def parse(argv: Sequence[str], *, extra_flags=None,
          workdir_flag: bool = True) -> tuple[ml_collections.ConfigDict, flags.FlagValues]:
    """Parses argv (argv[0] is the program) into a locked, resolved config. `extra_flags`:
    callables that define more flags on the FlagValues; `workdir_flag=False` leaves out
    train.py's `--workdir` (evaluate.py's config has a key of that name)."""
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file (path[:arg])", flag_values=fv,
                                    lock_config=True, sys_argv=list(argv))
    if workdir_flag:
        flags.DEFINE_string("workdir", None, "work directory (checkpoints, exports, metrics)",
                            flag_values=fv)
    for define in extra_flags or ():
        define(fv)
    try:
        fv(list(argv))
    except flags.Error as e:
        raise SystemExit(f"error: {e}") from None
    except (AttributeError, KeyError) as e:  # ml_collections: override of a missing key
        raise SystemExit(f"error: unknown config key in {_bad_override(argv, e)}") from None
    if fv.config is None:
        raise SystemExit("error: --config=configs/<name>.py is required")
    return fv.config, fv


def _bad_override(argv: Sequence[str], err: Exception) -> str:
    """The --config.a.b=v argument that named a key the config lacks (ml_collections'
    error names only the last part), with that error."""
    detail = str(err.args[0] if err.args else err)
    missing = detail.strip("'\"")
    for arg in argv:
        path = arg.split("=", 1)[0]
        if path.startswith("--config.") and missing in path.split(".")[1:]:
            return f"{arg} ({path.removeprefix('--')} does not exist)"
    return f"an override: {detail}"


def load(path_and_arg: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
    """The same config as `--config=path_and_arg --config.k=v ...`, from code (tests)."""
    argv = ["prog", f"--config={path_and_arg}"]
    argv += [f"--config.{k}={_flag_value(v)}" for k, v in (overrides or {}).items()]
    return parse(argv)[0]


def _flag_value(v) -> str:
    return repr(tuple(v)) if isinstance(v, (list, tuple)) else str(v)


SECRET_KEYS = ("token",)


def redacted(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy with every non-empty secret (`token` keys, at any depth) replaced."""
    out = ml_collections.ConfigDict(config.to_dict())
    stack = [out]
    while stack:
        node = stack.pop()
        for k, v in node.items():
            if isinstance(v, ml_collections.ConfigDict):
                stack.append(v)
            elif k in SECRET_KEYS and v:
                node[k] = "<redacted>"
    return out


def save(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes the resolved config as JSON in the work directory and logs it, with
    secrets redacted (config.json is world-readable like any run output)."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    shown = redacted(config)
    with open(path, "w") as f:
        f.write(shown.to_json_best_effort(indent=2, sort_keys=True))
    log.info("resolved config (saved to %s):\n%s", path, shown)
    return path
