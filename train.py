"""Train an SCM: `python train.py [dataset=...] [graph=...] [mechanism/image=...] [trainer=...] [key=value]`."""

import hydra
from omegaconf import DictConfig

import imcf.config  # registers the config schemas with Hydra


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from imcf.cli import train_and_evaluate, user_errors
    from imcf.training.loggers import configure_console

    configure_console()
    with user_errors():
        train_and_evaluate(cfg)


if __name__ == "__main__":
    imcf.config.run_entry(main)
