"""Evaluate a trained SCM.

`python evaluate.py run_dir=runs/<name> [num_samples=...] [compute=[...]] [metrics/protocol=benchmark]`
"""

import hydra
from omegaconf import DictConfig

import imcf.config  # registers the config schemas with Hydra


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from imcf.cli import user_errors
    from imcf.evaluation import evaluate
    from imcf.training.loggers import configure_console

    configure_console()
    with user_errors():
        evaluate(cfg)


if __name__ == "__main__":
    imcf.config.run_entry(main)
