"""What the entry points share: a mistake of the user's ends in one clear line on stderr, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from imcf.config import ConfigError
from imcf.evaluation import EvaluationError, evaluate
from imcf.evaluators.cache import CacheMismatchError
from imcf.graph import GraphError
from imcf.io import CheckpointError, MalformedFileError, MissingFileError, UnwritableDirError

# errors whose message already says what is wrong and what to do; anything else is a bug and keeps its traceback
USER_ERRORS = (
    ConfigError,
    GraphError,
    CheckpointError,
    EvaluationError,
    MissingFileError,
    MalformedFileError,
    UnwritableDirError,
    CacheMismatchError,
)


@contextmanager
def user_errors() -> Iterator[None]:
    """Print a user error's message as `error: ...` and exit with status 1."""
    try:
        yield
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def train_and_evaluate(cfg: Any) -> dict[str, Any]:
    """`python train.py`: train (`imcf.training.train`), then evaluate when training says an evaluation is due
    (`evaluate_after`); the report's directory is returned under "report"."""
    from imcf.training import train

    result = train(cfg)
    evaluation = result.pop("evaluate", None)
    if evaluation is not None:
        result["report"] = evaluate(evaluation)
    return result
