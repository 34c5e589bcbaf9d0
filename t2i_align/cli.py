"""What every entry point (train, evaluate, grid, build_dataset, cache_latents) shares: quiet
library output and one-line errors.

- `quiet_libraries()` turns off the loading bars of transformers and diffusers ("Loading
  weights", "Loading pipeline components") and their info and warning chatter, so a run's console
  holds our own progress bars and log lines (download bars of the hub stay: they are progress).
- `@one_line_errors` (under @hydra.main) prints a UserError (errors.py: bad input or config, raised
  on purpose with a message that names the problem) as "error: <message>" and exits with status
  1, without a traceback. HYDRA_FULL_ERROR=1 re-raises it, so the traceback is there when wanted.
"""

import functools
import logging
import os
import sys

from t2i_align.errors import UserError


def quiet_libraries() -> None:
    """No library loading bars or info logs; our loggers at INFO."""
    logging.getLogger("t2i_align").setLevel(logging.INFO)
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    import datasets
    import diffusers

    datasets.disable_progress_bars()  # "Map" / "Filter" / "Saving the dataset" bars

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


def one_line_errors(main):
    """Decorator for a Hydra task function: UserError -> one line on stderr, exit status 1."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as error:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            message = " ".join(str(error).split("\n")) if str(error) else type(error).__name__
            print(f"error: {message} (HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr, flush=True)
            sys.exit(1)

    return wrapper
