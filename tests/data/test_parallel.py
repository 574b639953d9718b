"""Building a dataset: a pool worker that dies is an error that says so, never a wait for its chunk; a cache
that cannot be written is an error before any work; a graph that asks for variables the data lack is named."""

import os

import pytest

from imcf.config import ConfigError
from imcf.data.parallel import map_chunks


def test_a_dead_worker_is_an_error_not_a_hang():
    assert map_chunks(abs, [-1, -2, -3], [1, 1, 1], workers=2) == [1, 2, 3]
    # os._exit ends the worker process itself (as SIGKILL or the out-of-memory killer would)
    with pytest.raises(RuntimeError, match="morphomnist train: a worker of the 2-process rendering pool died"):
        map_chunks(os._exit, [3, 4, 5], [1, 1, 1], workers=2, progress="morphomnist train")


def test_an_unwritable_data_root_fails_before_generating(tmp_path):
    from imcf.data.faces import FacesDataset
    from imcf.data.morphomnist.dataset import MorphoMNIST

    blocked = tmp_path / "a_file"  # a directory cannot be made under a file (whoever runs the tests)
    blocked.write_text("")
    with pytest.raises(OSError, match=r"cannot write the Morpho-MNIST cache under .*a_file.*data_root="):
        MorphoMNIST(str(blocked), "train", num_samples=50, workers=1)
    with pytest.raises(OSError, match=r"cannot write the faces cache under .*a_file.*data_root="):
        FacesDataset(str(blocked), "train", sizes={"train": 8, "val": 4, "test": 4})


def test_dataset_sizes_below_one_are_config_errors_naming_the_option(tmp_path):
    from imcf.config import ConfigError
    from imcf.data.faces import FacesDataset
    from imcf.data.linear import LinearGaussianDataset
    from imcf.data.morphomnist.dataset import MorphoMNIST

    with pytest.raises(ConfigError, match=r"dataset.options.num_samples must be a whole number >= 3 .* got -3"):
        MorphoMNIST(str(tmp_path), "train", num_samples=-3, workers=1)
    with pytest.raises(ConfigError, match=r"faces: dataset.options.sizes.val must be a whole number >= 1, got 0"):
        FacesDataset(str(tmp_path), "val", sizes={"train": 8, "val": 0, "test": 4})
    with pytest.raises(ConfigError, match=r"dataset.options.sizes.test must be a whole number >= 1, got None"):
        LinearGaussianDataset(str(tmp_path), "test", sizes={"train": 8, "val": 4})


def test_a_graph_whose_nodes_the_dataset_lacks_is_named_when_the_data_are_built(tmp_path):
    """`dataset=faces` with the Morpho-MNIST graph failed inside training as `KeyError: 'thickness'`."""
    from imcf.config import ConfigError
    from imcf.data.datamodule import CausalDataModule

    dm = CausalDataModule("linear_gaussian", root=str(tmp_path), nodes=["x1", "x2", "thickness"])
    with pytest.raises(ConfigError, match=r"graph node\(s\) \['thickness'\] are not variables of dataset "
                       r"'linear_gaussian', which provides \['x1', 'x2', 'x3', 'x4'\].*graph=linear4"):  # fmt: skip
        dm.dataset("train")
    assert len(CausalDataModule("linear_gaussian", root=str(tmp_path), nodes=["x1", "x4"]).dataset("val")) > 0


def test_an_image_size_the_graph_does_not_declare_is_named_when_the_data_are_built(tmp_path):
    """`experiment=faces dataset.options.size=48` rendered 48x48 faces for a 64x64 graph and then failed inside the
    first training step with a ValueError traceback (`expects images (B, 3, 64, 64), got (32, 3, 48, 48)`)."""
    from imcf.config import ConfigError
    from imcf.data.datamodule import CausalDataModule

    sizes = {"train": 4, "val": 2, "test": 2}
    nodes = ["smiling", "image"]
    dm = CausalDataModule("faces", root=str(tmp_path), nodes=nodes, shapes={"smiling": (1,), "image": (3, 64, 64)},
                          sizes=sizes, size=32, workers=1)  # fmt: skip
    with pytest.raises(ConfigError, match=r"graph node 'image' has shape \[3, 64, 64\] but dataset 'faces' gives "
                       r"\[3, 32, 32\] per sample: make graph.nodes.image"):  # fmt: skip
        dm.dataset("val")
    ok = CausalDataModule("faces", root=str(tmp_path), nodes=nodes, shapes={"smiling": (1,), "image": (3, 32, 32)},
                          sizes=sizes, size=32, workers=1)  # fmt: skip
    assert tuple(ok.dataset("val")[0]["image"].shape) == (3, 32, 32)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("linear_gausian", {}, r"dataset.name: unknown dataset 'linear_gausian'; registered: \['celeba', 'faces'"),
        ("linear_gaussian", {"bogus": 1}, r"dataset.options: \['bogus'\] are not options of dataset 'linear_gaussian'"),
        ("linear_gaussian", {"seed": "abc"}, r"dataset.options.seed must be a whole number, got 'abc'"),
        ("morphomnist", {"upscale": 0}, r"morphomnist: dataset.options.upscale must be a whole number >= 1, got 0"),
        ("morphomnist", {"upscale": 2.5}, r"dataset.options.upscale must be a whole number >= 1, got 2.5"),
        ("morphomnist", {"seed": "abc"}, r"morphomnist: dataset.options.seed must be a whole number, got 'abc'"),
        ("morphomnist", {"num_samples": 2}, r"dataset.options.num_samples must be a whole number >= 3 \(or null\)"),
        ("morphomnist", {"workers": True}, r"options.workers must be a whole number >= 1 \(or null\), got True"),
        ("morphomnist", {"val_fraction": -0.2}, r"dataset.options.val_fraction must be in \(0, 1\), got -0.2"),
        ("morphomnist", {"test_fraction": 1.5}, r"dataset.options.test_fraction must be in \(0, 1\), got 1.5"),
        ("faces", {"size": "big"}, r"faces: dataset.options.size must be a whole number >= 16, got 'big'"),
        ("faces", {"fixed": {"eyeglasses": 0.5}}, r"faces: dataset.options.fixed.eyeglasses must be a whole number"),
        ("faces", {"workers": 0}, r"faces: dataset.options.workers must be a whole number >= 1 \(or null\), got 0"),
    ],
)
def test_a_dataset_name_or_option_the_dataset_refuses_is_one_config_error(tmp_path, name, options, message):
    """These were a KeyError, TypeError (`unexpected keyword argument`) or ValueError traceback."""
    from imcf.data.datamodule import build_dataset

    with pytest.raises(ConfigError, match=message):
        build_dataset(name, str(tmp_path), "test", **options)
    assert not list(tmp_path.iterdir())


def test_every_pool_worker_is_spawned_with_sigterm_blocked():
    """The workers inherit a blocked SIGTERM until their initializer ignores it. Starting multiprocessing's
    resource tracker (the pool's first queue does, in a fresh process) unblocks SIGTERM in the parent: a worker
    spawned after that and still importing when a group SIGTERM came died (a CI run of train.py broke its pool)."""
    import subprocess
    import sys

    script = (
        "import signal, concurrent.futures.process as p\n"
        "from imcf.data.parallel import map_chunks\n"
        "seen, spawn = [], p.ProcessPoolExecutor._spawn_process\n"
        "def spy(self):\n"
        "    seen.append(signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, []))\n"
        "    spawn(self)\n"
        "p.ProcessPoolExecutor._spawn_process = spy\n"
        "assert map_chunks(abs, [-1, -2, -3], [1, 1, 1], workers=2) == [1, 2, 3]\n"
        "print(seen, signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, []))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[0] == "[True, True] False"  # blocked at both spawns, restored afterwards


@pytest.mark.parametrize("guarded", [False, True])
def test_a_script_without_a_main_guard_renders_serially_instead_of_killing_its_workers(tmp_path, guarded):
    """A spawned worker re-runs the top level of an unguarded script (which starts the pool again) and dies before
    its first chunk: such a script renders in its own process and says why; a guarded one keeps the pool."""
    import subprocess
    import sys

    body = "from imcf.data.parallel import map_chunks\nprint(map_chunks(abs, [-1, -2, -3], [1, 1, 1], workers=2))\n"
    script = tmp_path / "user_script.py"
    indented = "".join(f"    {line}\n" for line in body.splitlines())
    script.write_text(f'def main():\n{indented}if __name__ == "__main__":\n    main()\n' if guarded else body)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[1, 2, 3]"
    assert ("has no `if __name__" in out.stdout) is not guarded
    assert (str(script) in out.stdout) is not guarded
