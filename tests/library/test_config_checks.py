"""Nonsensical settings are refused when the config is loaded, one line naming the key and value."""

from __future__ import annotations

import re

import numpy as np
import pytest

from spikingjelly_ff.runs.config import ConfigError, load_config
from spikingjelly_ff.runs.data import Split

HEBBIAN = "paper/hebbian-batched-symmetric"
ANALOG = "paper/analog-sigmoid"


@pytest.mark.parametrize(
    "name,overrides,message",
    [
        # Hebbian learning
        (HEBBIAN, ["train.hebbian.eta=nan"], "train.hebbian: eta must be a finite number >= 0, got nan"),
        (HEBBIAN, ["train.hebbian.eta=.inf"], "eta must be a finite number >= 0, got inf"),
        (HEBBIAN, ["train.hebbian.eta=-0.5"], "eta must be a finite number >= 0, got -0.5"),
        (HEBBIAN, ["train.hebbian.eligibility_tau=0"], "eligibility_tau must lie in (0, 1] or be None, got 0"),
        (HEBBIAN, ["train.hebbian.eligibility_tau=-1"], "eligibility_tau must lie in (0, 1] or be None, got -1"),
        (HEBBIAN, ["train.hebbian.eligibility_tau=5"], "eligibility_tau must lie in (0, 1] or be None, got 5"),
        (HEBBIAN, ["train.hebbian.eligibility_tau=nan"], "eligibility_tau must lie in (0, 1] or be None, got nan"),
        # neuron, trace, encoder, embedding, probability
        (HEBBIAN, ["model.neuron.v_threshold=nan"], "model.neuron: v_threshold must be a finite number, got nan"),
        (HEBBIAN, ["model.neuron.v_reset=-.inf"], "v_reset must be a finite number, got -inf"),
        (HEBBIAN, ["model.neuron.tau=.inf"], "tau must be a finite number, got inf"),
        (HEBBIAN, ["model.trace.scale=.inf"], "model.trace: scale must be a finite number, got inf"),
        (HEBBIAN, ["model.encoder.gain=-1"], "model.encoder: gain must be a finite number >= 0, got -1"),
        (HEBBIAN, ["model.encoder.gain=nan"], "gain must be a finite number >= 0, got nan"),
        (HEBBIAN, ["model.encoder.gain=.inf"], "gain must be a finite number >= 0, got inf"),
        (HEBBIAN, ["model.embedding.scale=nan"], "model.embedding: scale must be a finite number, got nan"),
        (HEBBIAN, ["model.probability.eps=.inf"], "model.probability: eps must be a finite number, got inf"),
        (ANALOG, ["model.probability.alpha=nan"], "alpha must be a finite number, got nan"),
        (ANALOG, ["model.probability.theta=.inf"], "theta must be a finite number, got inf"),
        # model
        (HEBBIAN, ["model.init_std=nan"], "model.init_std must be a finite number > 0, got nan"),
        (HEBBIAN, ["model.init_std=-1"], "model.init_std must be a finite number > 0, got -1.0"),
        (ANALOG, ["model.init=normal", "model.init_std=0"], "model.init_std must be a finite number > 0, got 0.0"),
        (ANALOG, ["model.score_layers=[]"], "model.score_layers must name at least one layer (null: all), got []"),
        (
            ANALOG,
            ["model.shift_views=28"],
            "model.shift_views 28 must be below the image's smaller side (28 of (28, 28))",
        ),
        # optimizer
        (ANALOG, ["train.optimizer.lr=0"], "train.optimizer.lr must be a finite number > 0, got 0.0"),
        (ANALOG, ["train.optimizer.lr=-0.01"], "train.optimizer.lr must be a finite number > 0, got -0.01"),
        (ANALOG, ["train.optimizer.lr=.inf"], "train.optimizer.lr must be a finite number > 0, got inf"),
        (ANALOG, ["train.optimizer.lr=nan"], "train.optimizer.lr must be a finite number > 0, got nan"),
        (ANALOG, ["train.optimizer.weight_decay=-1"], "weight_decay must be a finite number >= 0, got -1.0"),
        (ANALOG, ["train.optimizer.weight_decay=.inf"], "weight_decay must be a finite number >= 0, got inf"),
        (ANALOG, ["train.optimizer.kind=sgd", "train.optimizer.momentum=-1"], "momentum must lie in [0, 1), got -1"),
        (ANALOG, ["train.optimizer.kind=sgd", "train.optimizer.momentum=1"], "momentum must lie in [0, 1), got 1"),
        (ANALOG, ["train.optimizer.momentum=nan"], "momentum must lie in [0, 1), got nan"),
        (ANALOG, ["train.readout={enabled: true, lr: .inf}"], "train.readout needs epochs >= 1, lr > 0"),
        # data, schedule of the run, threads
        (ANALOG, ["eval.limit=0"], "eval.limit must be >= 1 (null: the whole test set), got 0"),
        (HEBBIAN, ["eval.limit=-5"], "eval.limit must be >= 1 (null: the whole test set), got -5"),
        (ANALOG, ["train.augment_shift=-2"], "train.augment_shift must be >= 0 (0: no augmentation), got -2"),
        (
            ANALOG,
            ["train.augment_shift=100"],
            "train.augment_shift 100 must be below the image's smaller side (28 of (28, 28))",
        ),
        (ANALOG, ["train.eval_every=-1"], "train.eval_every must be >= 0 (0: only at the end), got -1"),
        (ANALOG, ["threads=-1"], "threads must lie in 1..1024 (null or 0: torch's choice), got -1"),
        (HEBBIAN, ["threads=1000000"], "threads must lie in 1..1024 (null or 0: torch's choice), got 1000000"),
        # --set
        (ANALOG, ["=5"], "--set expects key=value with a dotted key (train.epochs=3), got '=5'"),
        (ANALOG, ["train..epochs=5"], "with a dotted key"),
        (ANALOG, ["train={epochs: 1, epochs: 7}"], "--set train: duplicate key 'epochs' (line 1)"),
    ],
)
def test_nonsense_settings_are_refused_at_load(name, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(name, overrides)


@pytest.mark.parametrize(
    "name,key,good,bad",
    [
        (HEBBIAN, "train.hebbian.eta", "0", "-1e-9"),  # eta 0: nothing learns (a test of the window uses it)
        (HEBBIAN, "train.hebbian.eligibility_tau", "1", "1.0001"),
        (HEBBIAN, "model.encoder.gain", "0", "-0.1"),
        (ANALOG, "model.shift_views", "27", "28"),
        (ANALOG, "train.augment_shift", "27", "28"),
        (ANALOG, "train.optimizer.momentum", "0.99", "1.0"),
        (ANALOG, "threads", "1024", "1025"),
        (ANALOG, "eval.limit", "1", "0"),
    ],
)
def test_the_bounds_of_each_range(name, key, good, bad):
    load_config(name, [f"{key}={good}"])
    with pytest.raises(ConfigError, match=re.escape(key.rsplit(".", 1)[-1])):
        load_config(name, [f"{key}={bad}"])


def test_image_moves_of_a_folder_dataset_are_checked_where_its_shape_is_known(tmp_path):
    from spikingjelly_ff.functional.views import check_views
    from spikingjelly_ff.runs.config import check_image

    # a folder's images are sized only when they are read: the config loads
    cfg = load_config(ANALOG, [f"data.dataset={tmp_path}", "model.shift_views=12"])
    with pytest.raises(ValueError) as views:  # what `--views 12` says of these images
        check_views(12, (12, 16))
    with pytest.raises(ConfigError) as exc:
        check_image(cfg, (12, 16))
    assert str(exc.value) == f"model.{views.value}"
    cfg = load_config(ANALOG, [f"data.dataset={tmp_path}", "train.augment_shift=12"])
    with pytest.raises(ConfigError, match=re.escape("train.augment_shift 12 must be below the image's smaller side")):
        check_image(cfg, (16, 12))
    check_image(load_config(ANALOG, ["model.shift_views=11", "train.augment_shift=11"]), (12, 12))


def test_training_checks_the_moves_against_a_folder_datasets_images(tmp_path):
    """`sjff train` sizes a folder's images once read and refuses the moves before it trains."""
    import numpy as np

    from spikingjelly_ff.runs import data
    from spikingjelly_ff.runs.train import train

    folder = tmp_path / "small"
    folder.mkdir()
    for f in data.FILES:
        rng = np.random.default_rng(0)
        payload = rng.integers(0, 255, (8, 10, 10), np.uint8) if "images" in f else np.arange(8, dtype=np.uint8) % 2
        data.write_idx(folder / f, payload)
    sets = [f"data.dataset={folder}", "data.download=false", "train.epochs=1", "model.layers=[8]"]
    with pytest.raises(ConfigError, match=re.escape("model.shift_views 10 must be below the image's smaller side")):
        train(load_config(ANALOG, [*sets, "model.shift_views=10"]), tmp_path / "run", log=lambda s: None)
    assert not (tmp_path / "run" / "metrics.json").exists()


# -- YAML files --------------------------------------------------------------------------------


@pytest.mark.parametrize("text,got", [("0\n", "int 0"), ("false\n", "bool False"), ("[]\n", "list []"),
                                      ("[1, 2]\n", "list [1, 2]"), ("just words\n", "str 'just words'")])  # fmt: skip
@pytest.mark.parametrize("overrides", [[], ["train.epochs=1"]])
def test_a_config_file_that_is_not_a_mapping_is_refused(tmp_path, text, got, overrides):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"{path}: a config must be a mapping at the top level, got {got}")):
        load_config(path, overrides)


@pytest.mark.parametrize(
    "text,message",
    [
        ("train: {epochs: 1, epochs: 7}\n", "duplicate key 'epochs' (line 1)"),
        ("seed: 1\ntrain:\n  epochs: 2\nseed: 2\n", "duplicate key 'seed' (line 4)"),
        ("model:\n  probability:\n    kind: sigmoid\n    alpha: 1\n    alpha: 2\n", "duplicate key 'alpha' (line 5)"),
    ],
)
def test_a_key_given_twice_in_a_file_is_refused(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"{path}: {message}")):
        load_config(path)
    # a merge key may still be overridden, and an empty file means the defaults
    path.write_text("train:\n  <<: {epochs: 2, batch_size: 10}\n  epochs: 3\n")
    assert (load_config(path).train.epochs, load_config(path).train.batch_size) == (3, 10)
    path.write_text("# nothing set\n")
    assert load_config(path, ["train.epochs=1"]) == load_config(None, ["train.epochs=1"])


def test_a_directory_as_the_config_says_so(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(f"config {tmp_path} is a directory, not a file")):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="config paper is a directory, not a file"):
        load_config("paper")


# -- Split.take --------------------------------------------------------------------------------


def test_split_take_refuses_a_limit_below_one():
    split = Split(np.zeros((5, 4), np.uint8), np.arange(5), (2, 2))
    for n in (0, -1, -5):
        with pytest.raises(ValueError, match=re.escape(f"limit must be >= 1 (None: all samples), got {n}")):
            split.take(n)
    assert len(split.take(None)) == 5 and len(split.take(9)) == 5
    assert split.take(2).labels.tolist() == [0, 1]
