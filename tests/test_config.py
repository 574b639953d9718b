"""Config composition and validation: unknown or missing keys fail with their full path."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from imcf.config import ConfigError, EvaluateConfig, TrainConfig, validate
from imcf.graph import CausalGraph
from imcf.training.specs import mechanism_specs

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")


def _compose(overrides=()):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_default_config_validates():
    cfg = validate(_compose(), TrainConfig)
    assert cfg.run_dir.startswith("runs/")
    assert cfg.evaluate.run_dir == cfg.run_dir


def test_composition_rejects_unknown_and_mistyped_keys():
    with pytest.raises(ConfigCompositionException, match="trainer.max_epoch"):
        _compose(["trainer.max_epoch=3"])  # typo
    with pytest.raises(ConfigCompositionException, match="trainer.max_epochs"):
        _compose(["trainer.max_epochs=many"])


@pytest.mark.parametrize("added", ["+bogus=1", "+trainer.foo=2", "+evaluate.bar=3"])
def test_keys_added_with_plus_are_rejected_like_any_unknown_key(added):
    key = added[1:].split("=")[0]
    with pytest.raises(ConfigError, match=f"invalid config key '{key}'"):
        validate(_compose([added]), TrainConfig)
    # free-form sections still take new keys
    validate(
        _compose(["+mechanism.x2.pretrained=a.ckpt", "+unit_overrides={x2: {trainer: {max_epochs: 3}}}"]), TrainConfig
    )


def test_validate_names_unknown_and_mistyped_keys():
    cfg = {"run_dir": "r", "dataset": {"name": "d"}, "trainer": {"max_epoch": 3}}
    with pytest.raises(ConfigError, match="trainer.max_epoch"):
        validate(cfg, TrainConfig)
    with pytest.raises(ConfigError, match="optim.lr"):
        validate({"run_dir": "r", "dataset": {"name": "d"}, "optim": {"lr": "fast"}}, TrainConfig)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=-0.1", "optim.lr must be > 0, got -0.1"),
        ("optim.lr=0", "optim.lr must be > 0, got 0"),
        ("optim.betas=[0.9]", r"optim.betas must be two numbers in \[0, 1\), got \[0.9\]"),
        ("optim.ema_decay=1.0", r"optim.ema_decay must be in \[0, 1\) \(or null\), got 1.0"),
        ("optim.warmup_steps=-5", "optim.warmup_steps must be >= 0"),
        ("dataset.batch_size=0", "dataset.batch_size must be >= 1, got 0"),
        ("trainer.max_epochs=-2", "trainer.max_epochs must be >= -1"),
        ("trainer.devices=0", r"trainer.devices must be 'auto', -1 \(all\), a count >= 1 .*, got 0"),
        ("trainer.devices=[]", r"trainer.devices must be .*, got \[\]"),
        ("trainer.devices=two", r"trainer.devices must be .*, got 'two'"),
        ("logger.wandb_mode=onlin", "logger.wandb_mode must be one of online, offline, disabled, got 'onlin'"),
        ("seed=-1", r"seed must be in \[0, 4294967295\], got -1"),
        ("evaluate.seed=99999999999", r"evaluate.seed must be in \[0, "),
        ("evaluate.num_samples=-5", "evaluate.num_samples must be >= 1"),
        ("evaluate.cycles=[]", "evaluate.cycles must be a non-empty list"),
        ("evaluate.cycles=[1,0]", r"evaluate.cycles must .* got \[1, 0\]"),
        ("evaluate.interventions.bins=1", "evaluate.interventions.bins must be >= 2"),
        ("evaluate.predictors.max_epochs=0", "evaluate.predictors.max_epochs must be >= 1"),
        # these reached Lightning, torch or the evaluator after training (evaluate.*: after every unit trained)
        ("optim.scheduler=cosin", "optim.scheduler must be 'cosine' or null"),
        ("trainer.max_steps=-5", "trainer.max_steps must be >= -1, got -5"),
        ("trainer.limit_train_batches=-1", r"trainer.limit_train_batches must be a whole number .*, got -1"),
        ("trainer.limit_val_batches=1.5", r"trainer.limit_val_batches must be .*, got 1.5"),
        ("trainer.precision=bogus", "trainer.precision must be one of 32-true, .*, got 'bogus'"),
        ("evaluate.split=tset", "evaluate.split must be one of train, val, test, got 'tset'"),
        ("evaluate.realism.reference_split=bogus", "evaluate.realism.reference_split must be one of train, val, test"),
        ("evaluate.realism.features=incept", "evaluate.realism.features must be one of predictors, inception"),
        ("evaluate.minimality.weights=[0.5]", r"evaluate.minimality.weights must be two weights >= 0"),
        ("evaluate.accelerator=tpu", "evaluate.accelerator must be one of auto, cpu, gpu, cuda, got 'tpu'"),
    ],
)
def test_values_out_of_range_are_named_before_anything_runs(override, message):
    """Such values reached torch (`Invalid learning rate: -0.1`, naming no key) after the data were built, or
    ran silently (evaluate.num_samples=-5)."""
    with pytest.raises(ConfigError, match=message):
        validate(_compose([override]), TrainConfig)


@pytest.mark.parametrize(
    "override",
    ["trainer.precision=16-mixed", "trainer.precision=32", "trainer.limit_train_batches=5", "optim.scheduler=cosine",
     "trainer.limit_val_batches=0.25", "trainer.max_steps=100", "evaluate.minimality.weights=[1,0]"],
)  # fmt: skip
def test_values_lightning_and_the_evaluator_take_pass(override):
    validate(_compose([override]), TrainConfig)


@pytest.mark.parametrize("devices", ["auto", -1, 1, 4, [0], [0, 1], "2", "0,1", "1,"])
def test_device_settings_lightning_takes_pass(devices):
    from imcf.config import _devices_ok

    assert _devices_ok(devices)


@pytest.mark.parametrize("devices", [0, -2, [], [-1], "", "0", "x", True, 1.5])
def test_device_settings_lightning_refuses_are_caught(devices):
    """`trainer.devices=0` ended in Lightning's MisconfigurationException traceback after the data were built."""
    from imcf.config import _devices_ok

    assert not _devices_ok(devices)


def test_unit_overrides_values_are_checked_under_their_own_name():
    from omegaconf import OmegaConf

    from imcf.training.modular import Unit
    from imcf.training.run import unit_settings

    cfg = validate(_compose(["+unit_overrides={image: {optim: {lr: -1.0}}}"]), TrainConfig)
    unit = Unit(name="image", nodes=("image",), inputs=())
    with pytest.raises(ConfigError, match="unit_overrides.image.optim.lr must be > 0, got -1.0"):
        unit_settings(cfg, unit)
    cfg.unit_overrides = OmegaConf.create({"image": {"optim": {"lr": 2e-4}}})
    assert unit_settings(cfg, unit)[1]["lr"] == 2e-4


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="a GPU is present")
def test_a_gpu_trainer_without_a_gpu_is_named_before_training():
    """Lightning said only "No supported gpu backend found!" (after the data were built)."""
    from imcf.training.modular import Unit
    from imcf.training.run import unit_settings

    unit = Unit(name="image", nodes=("image",), inputs=())
    with pytest.raises(ConfigError, match=r"trainer.accelerator=gpu but torch sees no GPU .* use trainer=cpu"):
        unit_settings(validate(_compose(["trainer=gpu"]), TrainConfig), unit)
    over = validate(_compose(["+unit_overrides={image: {trainer: {accelerator: cuda}}}"]), TrainConfig)
    with pytest.raises(ConfigError, match=r"unit_overrides.image.trainer.accelerator=cuda but"):
        unit_settings(over, unit)


def test_an_image_gain_naming_no_attribute_is_refused():
    """A typo in dataset.image_gain left the VAE without its output gain, silently (do(intensity) then misses by
    10+ grey levels); a dataset attribute the graph does not use stays allowed."""
    with pytest.raises(ConfigError, match=r"dataset.image_gain: \['intensty'\] is neither a node"):
        mechanism_specs(CausalGraph.from_yaml(Path(CONFIGS) / "graph/morphomnist.yaml"), {"image": {"family": "vae"}},
                        ["intensty"], {"intensity": {}})  # fmt: skip
    g = CausalGraph.from_dict({"digit": "categorical(10)", "image": {"kind": "image", "shape": [1, 32, 32],
                                                                      "parents": ["digit"]}})  # fmt: skip
    specs = mechanism_specs(g, {"discrete": {"family": "discrete"}, "image": {"family": "vae"}}, ["intensity"],
                            {"intensity": {}})  # fmt: skip
    assert "gain_parents" not in (specs["image"].config or {})


def test_dataset_image_gain_reaches_the_families_that_model_a_gain():
    g = CausalGraph.from_dict(
        {
            "t": "continuous",
            "i": {"kind": "continuous", "parents": ["t"]},
            "x": {"kind": "image", "shape": [1, 32, 32], "parents": ["t", "i"]},
            "y": {"kind": "image", "shape": [1, 32, 32], "parents": ["t"]},
        }
    )
    mech = {"attribute": {"family": "linear_gaussian"}}
    vae = mechanism_specs(g, {**mech, "image": {"family": "vae"}}, image_gain=["i"])
    assert vae["x"].config == {"gain_parents": ["i"]}
    ddim = mechanism_specs(g, {**mech, "image": {"family": "ddim"}}, image_gain=["i"])
    assert ddim["x"].config == {"gain_parents": ["i"]}  # a fixed proportional gain (imcf/mechanisms/ddim.py)
    assert vae["y"].config == {}  # i is not a parent of y
    gan = mechanism_specs(g, {**mech, "image": {"family": "gan"}}, image_gain=["i"])
    assert gan["x"].config == {"gain_parents": ["i"]}  # a fixed proportional gain (imcf/mechanisms/gan.py)
    own = mechanism_specs(g, {**mech, "image": {"family": "hvae", "config": {"gain_parents": []}}}, image_gain=["i"])
    assert own["x"].config == {"gain_parents": []}  # the node's own setting wins
    assert _compose([])["dataset"]["image_gain"] == ["intensity"]


def test_ddim_experiment_gives_the_image_unit_its_longer_budget_only():
    cfg = validate(_compose(["experiment=morphomnist_ddim"]), TrainConfig)
    default = validate(_compose(["mechanism/image=ddim"]), TrainConfig)
    assert cfg.mechanism["image"]["family"] == "ddim" and cfg.name == "morphomnist-ddim"
    assert cfg.unit_overrides["image"]["trainer"]["max_epochs"] == 100
    # everything else is the default experiment's with a DDIM image: the attribute units, the image lr, patience
    assert cfg.trainer == default.trainer and cfg.early_stopping == default.early_stopping
    assert cfg.unit_overrides["image"]["optim"] == default.unit_overrides["image"]["optim"]


def test_faces_ddim_experiment_is_the_faces_experiment_with_a_fast_ddim():
    cfg = validate(_compose(["experiment=faces_ddim"]), TrainConfig)
    faces = validate(_compose(["experiment=faces", "mechanism/image=ddim"]), TrainConfig)
    assert cfg.name == "faces-ddim" and cfg.mechanism["image"]["family"] == "ddim"
    assert cfg.mechanism["image"]["config"]["num_inference_steps"] == 10
    assert faces.mechanism["image"]["config"]["num_inference_steps"] == 50  # the preset's, for the MNIST DDIM
    assert cfg.trainer == faces.trainer and cfg.dataset == faces.dataset and cfg.graph == faces.graph
    simple = validate(_compose(["experiment=faces_ddim", "graph=faces_simple"]), TrainConfig)
    assert list(simple.graph["nodes"]) == ["smiling", "eyeglasses", "image"]


def test_missing_required_key_is_named():
    with pytest.raises(ConfigError, match="dataset.name"):
        validate({"run_dir": "x", "dataset": {"root": "d"}}, TrainConfig)


def test_mechanism_resolution_by_kind_and_per_node_override():
    g = CausalGraph.from_dict({"a": "continuous", "b": {"kind": "binary", "parents": ["a"]}})
    specs = mechanism_specs(
        g,
        {
            "attribute": {"family": "linear_gaussian", "config": {"sigma": 2.0}},
            "discrete": {"family": "discrete"},
            "a": {"config": {"bias": 1.0}, "pretrained": "x.ckpt"},
        },
    )
    assert specs["a"].family == "linear_gaussian"
    assert specs["a"].config == {"sigma": 2.0, "bias": 1.0}
    assert specs["a"].pretrained == "x.ckpt"
    assert specs["b"].family == "discrete"
    with pytest.raises(ConfigError, match=r"no mechanism for node 'b' \(kind binary\)"):
        mechanism_specs(g, {"attribute": {"family": "linear_gaussian"}})
    with pytest.raises(ConfigError, match="mechanism.c: not a node"):
        mechanism_specs(g, {"c": {"family": "linear_gaussian"}})
    with pytest.raises(ConfigError, match="mechanism.a"):
        mechanism_specs(g, {"attribute": {"family": "linear_gaussian", "colour": 1}})


def test_dataset_node_config_reaches_the_graphs_nodes_under_the_users_settings():
    g = CausalGraph.from_dict(
        {
            "t": "continuous",
            "i": {"kind": "continuous", "parents": ["t"]},
            "image": {"kind": "image", "shape": [1, 32, 32], "parents": ["t", "i"]},
        }
    )
    implied = {
        "t": {"support": "positive", "lower": 0.5},
        "i": {"support": "bounded", "lower": 64, "upper": 255},
        "image": {"parent_ranges": {"t": [0.5, 7.0], "i": [64, 255]}},
        "digit": {"hidden": 8},  # a node this graph lacks: skipped, not an error
    }
    mech = {
        "attribute": {"family": "flow", "config": {"support": "real", "num_layers": 2}},
        "image": {"family": "vae", "config": {"latent_dim": 4, "parent_ranges": {"t": [0, 9]}}},
        "i": {"config": {"upper": 300}},
    }
    specs = mechanism_specs(g, mech, node_config=implied)
    assert specs["t"].config == {"support": "positive", "lower": 0.5, "num_layers": 2}  # over the group's default
    assert specs["i"].config == {"support": "bounded", "lower": 64, "upper": 300, "num_layers": 2}  # node's wins
    # the user's parent range for t stays, the data add the one for i
    assert specs["image"].config == {"latent_dim": 4, "parent_ranges": {"t": [0, 9], "i": [64, 255]}}
    # a family without the key does not get it (linear_gaussian takes no support)
    lg = mechanism_specs(g, {**mech, "attribute": {"family": "linear_gaussian"}, "i": {}}, node_config=implied)
    assert lg["t"].config == {} and lg["i"].config == {}
    # the default experiment's supports come from the data; another dataset's graph composes without them
    cfg = _compose([])
    assert cfg["dataset"]["node_config"]["thickness"] == {"support": "positive", "lower": 0.5}
    assert "thickness" not in cfg["mechanism"]
    celeba = _compose(["dataset=celeba", "graph=celeba_simple"])
    assert dict(celeba["dataset"]["node_config"]) == {}


@pytest.mark.parametrize("protocol", ["quick", "benchmark"])
def test_every_evaluate_setting_can_be_overridden_under_either_protocol(protocol):
    """evaluate.py composed its YAML without the schema: a key the chosen protocol file does not set
    (`minimality.weights` under quick, `realism.max_reference` under benchmark) needed a `+`; a typo still fails."""
    overrides = [f"metrics/protocol={protocol}", "run_dir=r", "minimality.weights=[1,1]", "interventions.bins=5",
                 "realism.max_reference=100", "predictors.path=p.ckpt"]  # fmt: skip
    overrides.append("+inference.image.abduction.residual=additive")
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = validate(compose(config_name="evaluate", overrides=overrides), EvaluateConfig)
        with pytest.raises(ConfigCompositionException, match="minimality.wieghts"):
            compose(config_name="evaluate", overrides=["run_dir=r", "minimality.wieghts=[1,1]"])
    assert cfg.protocol == protocol and list(cfg.minimality.weights) == [1.0, 1.0] and cfg.interventions.bins == 5
    assert cfg.realism.max_reference == 100 and cfg.predictors.path == "p.ckpt"
    assert cfg.inference["image"]["abduction"]["residual"] == "additive"


@pytest.mark.parametrize(("family", "lr"), [("vae", 2e-3), ("hvae", 2e-3), ("gan", 1e-3), ("ddim", 1e-3)])
def test_default_experiment_picks_the_image_lr_per_family(family, lr):
    cfg = validate(_compose([f"mechanism/image={family}"]), TrainConfig)
    assert cfg.unit_overrides["image"]["optim"]["lr"] == lr


FACES_SIMPLE_SCALES = {"smiling": [0.5, 1.0, 1.0], "eyeglasses": [1.0, 0.0, 1.0]}


@pytest.mark.parametrize(
    ("overrides", "scale", "kl", "std", "critic", "film", "critic_scale", "refine", "fit"),
    [
        (["experiment=faces_simple"], FACES_SIMPLE_SCALES, 64.0, 0.1, 0.0, False, None, 0, 0),
        (["experiment=faces"], 0.5, 24.0, 0.1, 0.0, False, None, 0, 0),
        (["mechanism/image=hvae"], 0.5, 30.0, 0.07, 0.02, True, 0.625, 3, 10),
    ],
)
def test_the_hvae_preset_picks_its_settings_by_graph(
    overrides, scale, kl, std, critic, film, critic_scale, refine, fit
):
    """A list or mapping picked by `imcf_pick` survives `OmegaConf.resolve` (in place: a plain list failed there);
    the simple faces graph gives each parent its own scales and weights the KL by 64, the other faces graph halves
    the latents under 24, both at pixel std 0.1 without a critic; Morpho-MNIST (and any other graph) trains the
    sharper std 0.07 with FiLM under weight 30 with the realism stage on the whole batch, its decodes shrunk to
    0.625, and answers with the digit's latents halved, refined by 3 steps on the critic (none without a critic),
    its latents fitted by 10 steps (none on the faces' graphs, where it was not measured)."""
    cfg = validate(_compose(overrides), TrainConfig)
    config = cfg.mechanism["image"]["config"]
    assert config["abduction"]["withheld_latent_scale"] == scale
    assert config["kl_weight"] == kl and isinstance(config["kl_weight"], float)
    assert config["likelihood_std"] == std and config["adversarial"]["weight"] == critic
    assert config["adversarial"]["fraction"] == 1.0  # the HVAE's critic sees every row (the VAE's: half)
    assert config["film"] is film and config["adversarial"]["latent_scale"] == critic_scale
    assert config["abduction"]["refine"]["steps"] == refine
    assert config["abduction"]["fit"]["steps"] == fit and config["abduction"]["fit"]["withheld"] is False


@pytest.mark.parametrize(
    ("overrides", "weights"),
    [
        (["mechanism/image=hvae"], {"thickness": 1.0, "intensity": 0.0, "digit": 0.0}),
        (["experiment=faces_simple"], None),  # binary parents only: nothing for {continuous: 1.0} to cover
    ],
)
def test_the_hvae_preset_penalises_the_stroke_width_alone(overrides, weights):
    """The preset's `independence_weight: {continuous: 1.0}` covers Morpho-MNIST's thickness, not its digit (whose
    style the latents keep) nor its intensity (the gain); on the faces' binary parents it is off."""
    from imcf.training.run import build_scm

    cfg = _compose(overrides)
    scm, _ = build_scm(cfg)
    image = scm.mechanisms["image"]
    if weights is None:
        assert image.independence_weight == 0.0 and set(image.independence_weights.values()) == {0.0}
    else:
        assert image.independence_weights == weights and image.independence_warmup == 800


def test_pick_rejects_a_table_that_is_not_a_mapping():
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationResolutionError

    cfg = OmegaConf.create({"a": "${imcf_pick:vae,[1, 2],0.1}", "b": "${imcf_pick:gan,{vae: 1},0.1}"})
    assert cfg.b == 0.1
    with pytest.raises(InterpolationResolutionError, match="the table must be a mapping"):
        _ = cfg.a


@pytest.mark.parametrize("path", sorted((Path(CONFIGS) / "mechanism/image").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_image_preset_builds_outside_train_py_once_resolved_for_a_graph(path):
    """`mechanism_preset` resolves a preset's per-graph settings as a run on that graph does, so code that builds a
    mechanism from the file (the slow tests, benchmarks) gets numbers, not `${imcf_pick:...}` strings."""
    import imcf.mechanisms  # noqa: F401  (fills the registry)
    from imcf.config import mechanism_preset
    from imcf.registry import MECHANISMS

    graph = CausalGraph.from_yaml(Path(CONFIGS) / "graph/morphomnist.yaml")
    if "defaults:" in path.read_text():  # composed from another preset by Hydra: refused, naming the file
        with pytest.raises(ConfigError, match=rf"{path.name}: not a stand-alone mechanism preset"):
            mechanism_preset(path, graph="morphomnist")
        return
    spec = mechanism_preset(path, graph="morphomnist")
    assert "${" not in repr(spec)
    MECHANISMS[spec["family"]].from_graph(graph, "image", **spec["config"])
    if spec["family"] == "hvae" and path.stem == "hvae":
        faces = mechanism_preset(path, graph="faces_simple")["config"]
        scales = {"smiling": [0.5, 1.0, 1.0], "eyeglasses": [1.0, 0.0, 1.0]}  # a scale per parent, per level
        assert faces["kl_weight"] == 64.0 and faces["abduction"]["withheld_latent_scale"] == scales
        faces_graph = CausalGraph.from_yaml(Path(CONFIGS) / "graph/faces_simple.yaml")
        built = MECHANISMS["hvae"].from_graph(faces_graph, "image", **faces)  # the parents it names exist there
        assert built.latent_scales("smiling") == (0.5, 1.0, 1.0) and built.shrinks_withheld
        assert mechanism_preset(path)["config"]["kl_weight"] == 30.0  # no graph: every table's default


def test_the_datas_parent_ranges_follow_the_graphs_parents():
    """Morpho-MNIST's node_config gives the image ranges for thickness and intensity; a graph whose image has no
    intensity parent was refused (`vae 'image': parent_ranges given for non-parent 'intensity'`). The data's ranges
    are kept for the parents the graph gives; a range the user sets for a non-parent is still refused."""
    from imcf.scm import SCM

    g = CausalGraph.from_dict(
        {
            "thickness": "continuous",
            "intensity": "continuous",
            "digit": "categorical(10)",
            "image": {"kind": "image", "shape": [1, 32, 32], "parents": ["thickness", "digit"]},
        }
    )
    implied = {"image": {"parent_ranges": {"thickness": [0.5, 7.0], "intensity": [64, 255]}}}
    mech = {"attribute": {"family": "flow"}, "discrete": {"family": "discrete"}}
    for family in ("vae", "hvae", "gan", "ddim"):
        specs = mechanism_specs(g, {**mech, "image": {"family": family}}, [], implied)
        assert specs["image"].config["parent_ranges"] == {"thickness": [0.5, 7.0]}, family
    SCM.build(g, {n: {"family": s.family, "config": s.config} for n, s in specs.items()})
    own = {**mech, "image": {"family": "vae", "config": {"parent_ranges": {"intensity": [64, 255]}}}}
    with pytest.raises(ValueError, match="parent_ranges given for non-parent 'intensity'"):
        specs = mechanism_specs(g, own, [], implied)
        SCM.build(g, {n: {"family": s.family, "config": s.config} for n, s in specs.items()})
