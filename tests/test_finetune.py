"""Finetuning schemes: what each trains, model selection on the validation split, checkpoints."""

import dataclasses

import pytest
import torch

from benchmark import load_classifier
from benchmark.config import PRESETS
from benchmark.data import load_dataset
from benchmark.finetune import load_encoder, run_finetune
from benchmark.models import BackboneConfig
from benchmark.pretrain import PretrainConfig, run_pretrain


@pytest.fixture(scope="module")
def encoder_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("pre")
    preset = PRESETS["smoke"]
    from methods import get_method

    recipe = preset.recipe(get_method("acl").paper_recipe())
    cfg = PretrainConfig("acl", {}, "digits", 16, "resnet10-tiny", 0, recipe, train_limit=128)
    run_pretrain(cfg, load_dataset("digits"), d, torch.device("cpu"), progress=False)
    return d / "encoder.pt"


@pytest.mark.parametrize("scheme", ["slf", "alf", "aff"])
def test_scheme_trains_what_it_should(tmp_path, encoder_path, scheme):
    data = load_dataset("digits")
    cfg = PRESETS["smoke"].finetune_config(scheme, "digits")
    info = run_finetune(encoder_path, cfg, data, tmp_path, torch.device("cpu"), seed=0, train_limit=128,
                        progress=False)
    clf = load_classifier(tmp_path / "classifier.pt")
    assert not clf.training
    enc, ck = load_encoder(encoder_path)
    assert ck["finetune_branch"] == "pgd" and info["encoder_branch"] == "pgd"
    pgd = {k.replace(".bn.pgd.", ".bn."): v for k, v in enc.state_dict().items() if ".bn.normal." not in k}
    same = all(torch.equal(clf.encoder.state_dict()[k], v) for k, v in pgd.items())
    assert same == (scheme != "aff")  # SLF/ALF: frozen encoder (weights and BN statistics)
    assert torch.count_nonzero(clf.fc.weight) > 0  # the zero-initialised head was trained
    x = data.test_x[:4].float() / 255
    assert clf(x).shape == (4, 10)


def test_val_selection_records_epoch(tmp_path, encoder_path):
    data = load_dataset("digits")
    cfg = dataclasses.replace(PRESETS["smoke"].finetune_config("slf", "digits", "val"), epochs=3)
    info = run_finetune(encoder_path, cfg, data, tmp_path, torch.device("cpu"), seed=0, train_limit=128,
                        progress=False)
    accs = [h["val_pgd20"] for h in info["history"]]
    assert len(accs) == 3
    assert info["selected_epoch"] == 1 + max(range(3), key=lambda i: (accs[i], -i))


def test_load_classifier_rejects_other_checkpoints(tmp_path, encoder_path):
    from benchmark.io import CheckpointError

    with pytest.raises(CheckpointError, match="holds a 'encoder' checkpoint, expected 'classifier'"):
        load_classifier(encoder_path)
    assert BackboneConfig("resnet10-tiny").feature_dim == 64
