"""Finetuning schemes: the registry, what each trains, model selection on the validation split,
checkpoints, and a scheme added as a one-file plugin."""

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from benchmark import load_classifier
from benchmark.config import PRESETS
from benchmark.data import load_dataset
from benchmark.errors import AcbenchError, UnknownName
from benchmark.finetune import load_encoder, run_finetune
from benchmark.models import BackboneConfig, Classifier
from benchmark.pretrain import PretrainConfig, run_pretrain
from benchmark.schemes import (
    SCHEMES,
    FinetuneConfig,
    Scheme,
    get_scheme,
    scheme_label,
    scheme_names,
    scheme_sort_key,
)

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "tests.plugins.lf_noise"


@pytest.fixture(scope="module")
def encoder_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("pre")
    preset = PRESETS["smoke"]
    from methods import get_method

    recipe = preset.recipe(get_method("acl").paper_recipe())
    cfg = PretrainConfig("acl", {}, "digits", 16, "resnet10-tiny", 0, recipe, train_limit=128)
    run_pretrain(cfg, load_dataset("digits"), d, torch.device("cpu"), progress=False)
    return d / "encoder.pt"


@pytest.fixture
def isolated_schemes(monkeypatch):
    """The scheme registry as it is now, restored after the test (plugins registered in it vanish)."""
    before = set(SCHEMES.names())  # loads the built-ins first
    monkeypatch.syspath_prepend(str(ROOT))
    yield SCHEMES
    for name in set(SCHEMES.names()) - before:
        SCHEMES.unregister(name)
    sys.modules.pop(PLUGIN, None)


@pytest.fixture
def lf_noise(isolated_schemes):
    isolated_schemes.load_plugin(PLUGIN)
    module = sys.modules[PLUGIN]
    module.CALLS.clear()
    return module


def test_builtin_schemes_in_table_order():
    assert scheme_names() == ["slf", "alf", "aff"]
    assert [scheme_label(s) for s in scheme_names()] == ["SLF", "ALF", "AFF"]
    assert [get_scheme(s).order for s in scheme_names()] == [0, 1, 2]
    assert [get_scheme(s).trains_encoder for s in scheme_names()] == [False, False, True]
    assert get_scheme("alf").name == "alf" and get_scheme("aff").label == "AFF"
    # unknown names (old records, other tools) sort after every known scheme, alphabetically
    names = ["zeta", "aff", "abc", "slf", "alf"]
    assert sorted(names, key=scheme_sort_key) == ["slf", "alf", "aff", "abc", "zeta"]
    assert scheme_label("zeta") == "ZETA"


def test_unknown_scheme_suggests_the_closest():
    with pytest.raises(UnknownName, match=r"unknown scheme 'sfl' \(did you mean 'slf'\?\)"):
        get_scheme("sfl")
    with pytest.raises(UnknownName, match=r"unknown scheme 'afff' \(did you mean 'aff'\?\); choose from"):
        FinetuneConfig("afff", epochs=1, batch_size=8, lr=0.1, milestones=())
    with pytest.raises(UnknownName, match=r"unknown selection 'best'"):
        FinetuneConfig("slf", epochs=1, batch_size=8, lr=0.1, milestones=(), selection="best")
    with pytest.raises(ValueError, match="learning rate"):
        FinetuneConfig("slf", epochs=1, batch_size=8, lr=0.0, milestones=())
    assert issubclass(UnknownName, AcbenchError) and issubclass(UnknownName, KeyError)


def test_paper_configs_follow_the_protocol():
    for dataset, lr in [("cifar10", 0.01), ("cifar100", 0.05), ("stl10", 0.1), ("digits", 0.01)]:
        for scheme in ("slf", "alf"):
            cfg = get_scheme(scheme).paper_config(dataset)
            assert (cfg.scheme, cfg.epochs, cfg.batch_size, cfg.lr, cfg.milestones) == (
                scheme, 25, 512, lr, (10, 20))
        aff = get_scheme("aff").paper_config(dataset)
        assert (aff.scheme, aff.epochs, aff.batch_size, aff.lr, aff.milestones) == ("aff", 25, 128, 0.1, (15, 20))
        assert (aff.momentum, aff.weight_decay, aff.trades_beta, aff.attack_steps) == (0.9, 2e-4, 6.0, 10)
        # the checkpoint's finetuning branch, single BN: nothing protocol-specific
        assert all((c.branch, c.dual_bn) == ("", False) for c in (cfg, aff))
        assert {"branch", "dual_bn"} <= set(aff.to_dict())  # part of the finetune stage key
    # presets scale the registry's recipe: smoke overrides epochs/batch/lr, keeps the rest
    smoke = PRESETS["smoke"].finetune_config("alf", "cifar100", "val")
    assert (smoke.epochs, smoke.batch_size, smoke.lr, smoke.attack_steps) == (2, 32, 0.5, 2)
    assert (smoke.weight_decay, smoke.eps, smoke.selection) == (2e-4, 8 / 255, "val")
    assert PRESETS["paper"].finetune_config("slf", "stl10") == get_scheme("slf").paper_config("stl10")


@pytest.mark.parametrize("scheme", ["slf", "alf", "aff"])
def test_scheme_loss_sets_mode_and_trains_its_parameters(scheme):
    torch.manual_seed(0)
    model = Classifier(BackboneConfig("resnet10-tiny"), 10)
    torch.nn.init.normal_(model.fc.weight, std=0.1)  # a zero head gives the encoder no gradient
    model.train()
    bn = next(m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    stats = bn.running_mean.clone()
    x, y = torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,))
    s = get_scheme(scheme)
    cfg = dataclasses.replace(s.paper_config("digits"), attack_steps=2, attack_step=4 / 255)
    loss = s.loss(model, x, y, cfg)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert model.training == s.trains_encoder  # frozen encoders stay in eval mode
    assert torch.equal(bn.running_mean, stats) != s.trains_encoder  # BN statistics move only for AFF
    loss.backward()
    assert model.fc.weight.grad is not None and model.fc.weight.grad.abs().sum() > 0
    enc_grads = [p.grad for p in model.encoder.parameters()]
    if s.trains_encoder:
        assert all(g is not None for g in enc_grads) and sum(g.abs().sum() for g in enc_grads) > 0
    else:
        assert all(g is None for g in enc_grads)


def test_alf_trains_on_pgd_examples_in_the_eps_ball():
    torch.manual_seed(0)
    model = Classifier(BackboneConfig("resnet10-tiny"), 10).eval()
    torch.nn.init.normal_(model.fc.weight, std=0.1)
    x, y = torch.rand(4, 3, 16, 16), torch.randint(0, 10, (4,))
    cfg = dataclasses.replace(get_scheme("alf").paper_config("digits"), attack_steps=3)
    x_adv = get_scheme("alf").inputs(model, x, y, cfg)
    assert (x_adv - x).abs().max() <= cfg.eps + 1e-6 and not torch.equal(x_adv, x)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.equal(get_scheme("slf").inputs(model, x, y, cfg), x)


def test_registry_accepts_only_schemes(isolated_schemes):
    with pytest.raises(TypeError, match="Scheme subclass"):
        isolated_schemes.register("not-a-scheme")(object)
    with pytest.raises(ValueError, match="already registered"):

        @isolated_schemes.register("slf")
        class Other(Scheme):
            pass


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
    assert torch.load(tmp_path / "classifier.pt", weights_only=True)["config"]["dual_bn"] is False
    x = data.test_x[:4].float() / 255
    assert clf(x).shape == (4, 10)


def test_plugin_scheme_trains_with_no_other_edit(tmp_path, encoder_path, lf_noise):
    assert scheme_names() == ["slf", "alf", "aff", "lf-noise"]
    assert scheme_label("lf-noise") == "LF-noise" and scheme_sort_key("lf-noise") == (10, "lf-noise")
    # the preset path works for it too: the plugin's recipe (SLF's), no preset override
    assert PRESETS["paper"].finetune_config("lf-noise", "cifar100").lr == 0.05
    base = PRESETS["smoke"].finetune_config("lf-noise", "digits")
    cfg = dataclasses.replace(base, epochs=2, batch_size=32, lr=0.5, milestones=())
    data = load_dataset("digits")
    info = run_finetune(encoder_path, cfg, data, tmp_path, torch.device("cpu"), seed=0, train_limit=128,
                        progress=False)
    assert [h["epoch"] for h in info["history"]] == [1, 2] and info["selected_epoch"] == 2
    assert len(lf_noise.CALLS) == 2 * (128 // 32)  # the loop asked the plugin for every batch
    assert all(n.abs().max() > 0 for n in lf_noise.CALLS)
    clf = load_classifier(tmp_path / "classifier.pt")
    enc, _ = load_encoder(encoder_path)
    pgd = {k.replace(".bn.pgd.", ".bn."): v for k, v in enc.state_dict().items() if ".bn.normal." not in k}
    assert all(torch.equal(clf.encoder.state_dict()[k], v) for k, v in pgd.items())  # frozen, as SLF
    assert torch.count_nonzero(clf.fc.weight) > 0
    ck = torch.load(tmp_path / "classifier.pt", weights_only=True)
    assert ck["config"]["scheme"] == "lf-noise"


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


@pytest.mark.parametrize("flip", [True, False])
def test_finetuning_augmentation_follows_the_config(tmp_path, encoder_path, monkeypatch, flip):
    import benchmark.finetune as finetune
    from benchmark.augment import CropFlip

    built = []

    class Recording(CropFlip):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append((self.padding, self.flip))

    monkeypatch.setattr(finetune, "CropFlip", Recording)
    cfg = dataclasses.replace(PRESETS["smoke"].finetune_config("slf", "digits"), epochs=1, flip=flip, crop_padding=1)
    run_finetune(encoder_path, cfg, load_dataset("digits"), tmp_path, torch.device("cpu"), seed=0, train_limit=64,
                 progress=False)
    assert built == [(1, flip)]
