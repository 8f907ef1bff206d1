"""The paper recipes (``attnfast.train.recipes.RECIPES``): every one resolves to a valid
configuration (``--dry-run``), the fine-grained ones and guidance on VOC carry the papers'
numbers (pinned here from the papers, not read from the table), the README's table of
experiments names every recipe with a command that resolves, and the two parameter groups follow
the LR schedule at their rates."""
import json
import re
from pathlib import Path

import pytest
import torch

import attnfast
from attnfast import train
from attnfast.ggam import GGAM
from attnfast.train import data as data_mod
from attnfast import models, pretrained
from attnfast.train import optim, recipes

README = Path(__file__).resolve().parents[1] / "README.md"


def dry_run(capsys, *argv):
    """The configuration ``--dry-run`` prints for ``argv``."""
    assert train.main([*argv, "--dry-run"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", sorted(recipes.RECIPES))
def test_every_recipe_resolves(name, capsys, tmp_path):
    """Every recipe: its values in the configuration, a known source and model, supervised
    layers that exist in the model (GGAM's with a channel count), a --pretrained that resolves
    to torchvision's file in the hub cache; nothing is loaded or written."""
    cfg = dry_run(capsys, "--recipe", name, "--out", str(tmp_path / "run"))
    for key, value in recipes.RECIPES[name].items():
        if key != "sf":
            assert cfg[key] == (list(value) if isinstance(value, tuple) else value), key
    assert cfg["recipe"] == name and cfg["data"] in data_mod.SOURCES
    assert cfg["model"] in models.available()
    assert set(cfg["methods"]) <= set(recipes.METHODS) and cfg["backbone_lr_scale"] > 0
    with torch.device("meta"):
        model = models.create(cfg["model"], 10)
    names = dict(model.named_modules())
    assert {cfg["layers"]["inner"], cfg["layers"]["last"], cfg["layers"]["ggam"]} <= set(names)
    assert cfg["layers"]["ggam"] in model.stage_channels
    if cfg["pretrained"] is not None:
        file = cfg["pretrained_file"]["path"]
        assert file == str(Path(torch.hub.get_dir()) / "checkpoints"
                           / pretrained.HUB_FILES[cfg["pretrained"]])
    assert not (tmp_path / "run").exists(), "--dry-run writes nothing"


def test_main_job_arms(capsys):
    """The main job (``make train``): baseline, Sharpen Focus at weight 0.1 and guidance at
    weight 0.1 with boxes for 10 % of the training images (docs/METHOD.md, the main job)."""
    cfg = dry_run(capsys, "--compare")
    assert cfg["methods"] == ["baseline", "sharpen-focus", "guidance"]
    assert (cfg["sf_weight"], cfg["guidance_weight"], cfg["box_fraction"]) == (0.1, 0.1, 0.1)
    assert (cfg["guidance_loss"], cfg["guidance_layers"], cfg["guidance_attention"]) == (
        "energy", "last", "gradcam")


@pytest.mark.parametrize("name", [n for n in data_mod.SOURCES if n not in data_mod.FROM_FOLDER])
def test_with_boxes_lists_the_sources_that_have_boxes(name):
    """data.WITH_BOXES (the trainer's one list) agrees with what each in-memory source gives."""
    data = data_mod.load(name, train_size=8, test_size=4)
    assert bool(data.boxes) == (name in data_mod.WITH_BOXES), name


def test_guidance_arm_needs_a_source_with_boxes(capsys):
    """On a source without boxes the recipe's guidance arm is left out; asked for by name it
    is refused before anything runs, naming the sources that have boxes."""
    assert dry_run(capsys, "--compare", "--data", "digits")["methods"] == [
        "baseline", "sharpen-focus"]
    with pytest.raises(SystemExit, match="needs boxes; --data digits has none.*located-digits"):
        train.main(["--method", "baseline,guidance", "--data", "digits", "--dry-run"])


# the papers' settings, written out here (Sharpen Focus Sec. 4; GGAM Sec. 3, as in issue 23)
SHARPEN_FOCUS_CUB = dict(data="cub200", image_size=448, batch_size=10, lr=0.001, epochs=90,
                         schedule="step", milestones=[30, 60], backbone_lr_scale=1.0)
GGAM_FINE_GRAINED = dict(image_size=448, lr=0.1, backbone_lr_scale=0.1, momentum=0.9,
                         weight_decay=5e-4, epochs=100, schedule="cosine",
                         methods=["baseline", "ggam"])


@pytest.mark.parametrize("name, model, weights", [
    ("cub200-resnet50", "resnet50", "ResNet50_Weights.IMAGENET1K_V1"),
    ("cub200-resnet101", "resnet101", "ResNet101_Weights.IMAGENET1K_V1")])
def test_sharpen_focus_cub_recipes(name, model, weights, capsys):
    cfg = dry_run(capsys, "--recipe", name)
    assert {k: cfg[k] for k in SHARPEN_FOCUS_CUB} == SHARPEN_FOCUS_CUB
    assert (cfg["model"], cfg["pretrained"]) == (model, weights)
    assert cfg["methods"] == ["baseline", "sharpen-focus"]
    assert cfg["layers"] == {"inner": "layer3", "last": "layer4", "ggam": "layer4"}


@pytest.mark.parametrize("data", ["cub200", "fgvc-aircraft", "stanford-cars"])
@pytest.mark.parametrize("model, weights, layers", [
    ("resnet50", "ResNet50_Weights.IMAGENET1K_V1", ("layer3", "layer4")),
    ("vgg19", "VGG19_Weights.IMAGENET1K_V1", ("layer4", "layer5"))])
def test_ggam_recipes(data, model, weights, layers, capsys):
    cfg = dry_run(capsys, "--recipe", f"{data}-{model}-ggam")
    assert {k: cfg[k] for k in GGAM_FINE_GRAINED} == GGAM_FINE_GRAINED
    assert (cfg["data"], cfg["model"], cfg["pretrained"]) == (data, model, weights)
    assert (cfg["layers"]["inner"], cfg["layers"]["last"], cfg["layers"]["ggam"]) == \
        (*layers, layers[1])


# guidance from boxes (Rao et al. 2023: ImageNet ResNet-50 at 224, batch 64, energy loss of the
# last layer's Grad-CAM, second order, as its authors' code runs it), on VOC 2012
GUIDANCE_VOC = dict(data="voc2012", model="resnet50", pretrained="ResNet50_Weights.IMAGENET1K_V1",
                    image_size=224, batch_size=64, guidance_loss="energy",
                    guidance_attention="gradcam", guidance_layers="last", order="second",
                    guidance_upsample="bilinear", box_fraction=1.0, methods=["baseline", "guidance"])


def test_guidance_voc_recipe(capsys):
    cfg = dry_run(capsys, "--recipe", "voc2012-resnet50-guidance")
    assert {k: cfg[k] for k in GUIDANCE_VOC} == GUIDANCE_VOC
    assert cfg["layers"]["last"] == "layer4"
    assert dry_run(capsys, "--recipe", "voc2012-resnet50-guidance", "--box-fraction",
                   "0.01")["box_fraction"] == 0.01


def test_dry_run_refuses_what_cannot_run(capsys):
    with pytest.raises(SystemExit, match="--backbone-lr-scale must be positive"):
        train.main(["--backbone-lr-scale", "0", "--dry-run"])
    with pytest.raises(SystemExit, match="--model resnet19: unknown"):
        train.main(["--model", "resnet19", "--dry-run"])


def readme_experiments():
    """(recipe, command) of each row of the README's table of the papers' experiments."""
    text = README.read_text()
    start = text.index("## Every experiment of the papers")
    rows = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("## "):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 6 and cells[-2].startswith("`"):
            rows.append((cells[-2].strip("`"), cells[-1].strip("`")))
    return rows


def test_readme_table_names_every_paper_recipe(capsys):
    """Every recipe but the main job's appears in the README's table, and each row's command
    resolves (``--dry-run``) to that recipe."""
    rows = readme_experiments()
    assert {r for r, _ in rows} == set(recipes.RECIPES) - {"located-digits", "digits"}
    for recipe, command in rows:
        argv = command.split()
        assert argv[:3] == ["python", "-m", "attnfast.train"], command
        assert dry_run(capsys, *argv[3:])["recipe"] == recipe


def test_vgg_backbone_trains_with_both_methods(tmp_path, capsys):
    """vgg19_bn's named stages serve both wrappers: Sharpen Focus on layer4 / layer5 (the
    analytic GAP + fc head) and GGAM's module after layer5, one tiny epoch each."""
    out = tmp_path / "run"
    argv = ["--data", "synthetic", "--train-size", "8", "--test-size", "4", "--image-size", "32",
            "--model", "vgg19_bn", "--batch-size", "4", "--epochs", "1", "--pictures", "0",
            "--no-progress", "--seeds", "1", "--method", "sharpen-focus,ggam",
            "--backbone-lr-scale", "0.1", "--out", str(out)]
    assert train.main(argv) == 0
    for method in ("sharpen-focus", "ggam"):
        row = json.loads((out / method / "metrics.json").read_text())["epochs"][0]
        assert row["train_attention_loss"] > 0 and row["backbone_lr"] == pytest.approx(
            0.1 * row["lr"])


# ----------------------------------------------------------------------------- parameter groups

def ggam_net():
    torch.manual_seed(0)
    model = models.create("resnet8", 10)
    return GGAM(model, "layer3", channels=64), model


def test_parameter_groups():
    """The model's layers but its head in ``backbone``; the head and GGAM's module in ``new``."""
    net, model = ggam_net()
    cfg = dict(lr=0.2, backbone_lr_scale=0.1)
    groups = optim.param_groups(net, model, cfg)
    assert [g["name"] for g in groups] == ["backbone", "new"]
    ids = lambda ps: {id(p) for p in ps}   # noqa: E731
    head = ids(model.fc.parameters())
    assert ids(groups[0]["params"]) == ids(model.parameters()) - head
    assert ids(groups[1]["params"]) == head | ids(net.attention.parameters())
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(net.parameters()))
    assert groups[0]["lr"] == pytest.approx(0.02) and groups[1]["lr"] == 0.2


def test_group_learning_rates_after_warm_up_and_at_the_end_of_the_cosine():
    """lr 0.1, backbone x 0.1, 4 epochs of 5 steps, 1 epoch of linear warm-up, cosine. After k
    steps the factor is min(1, (k + 1) / 5) * (1 + cos(pi k / 20)) / 2 (values by hand)."""
    net, model = ggam_net()
    cfg = dict(lr=0.1, backbone_lr_scale=0.1, momentum=0.0, weight_decay=0.0, epochs=4,
               warmup_epochs=1.0, schedule="cosine", milestones=())
    opt, sched = optim.optimizer(net, model, cfg, 5)
    seen = {}
    for k in range(21):
        seen[k] = [g["lr"] for g in opt.param_groups]
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx([0.002, 0.02])          # 1/5 of the rate, cosine at 1
    assert seen[4] == pytest.approx([0.01 * 0.9045084972, 0.1 * 0.9045084972])  # warm-up done
    assert seen[5] == pytest.approx([0.01 * 0.8535533906, 0.1 * 0.8535533906])
    assert seen[19] == pytest.approx([0.01 * 0.0061558297, 0.1 * 0.0061558297], abs=1e-12)
    assert seen[20] == pytest.approx([0.0, 0.0], abs=1e-15)   # the end of the cosine


def test_groups_update_at_their_rates():
    """One plain SGD step moves a backbone weight by 0.1 x lr x grad and the head by lr x grad."""
    net, model = ggam_net()
    cfg = dict(lr=0.5, backbone_lr_scale=0.1, momentum=0.0, weight_decay=0.0, epochs=1,
               warmup_epochs=0.0, schedule="constant", milestones=())
    opt, _ = optim.optimizer(net, model, cfg, 1)
    w, h = model.layer1[0].conv1.weight, model.fc.weight
    before = (w.detach().clone(), h.detach().clone())
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    assert torch.allclose(before[0] - w.detach(), torch.full_like(w, 0.05), rtol=0, atol=1e-7)
    assert torch.allclose(before[1] - h.detach(), torch.full_like(h, 0.5), rtol=0, atol=1e-7)


def test_overriding_resume_recomputes_each_group(tmp_path):
    """checkpoints.apply_settings gives each group its own base rate under the new settings."""
    from attnfast.train import checkpoints
    net, model = ggam_net()
    cfg = dict(lr=0.1, backbone_lr_scale=0.1, momentum=0.9, weight_decay=0.0, epochs=2,
               warmup_epochs=0.0, schedule="constant", milestones=())
    opt, sched = optim.optimizer(net, model, cfg, 3)
    checkpoints.apply_settings(dict(cfg, lr=0.4, backbone_lr_scale=0.5), opt, sched, 1, 3)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.2, 0.4])
    assert sched.base_lrs == pytest.approx([0.2, 0.4])
    assert [g["lr_scale"] for g in opt.param_groups] == [0.5, 1.0]


def test_resume_refuses_a_checkpoint_with_one_parameter_group(tmp_path):
    """A checkpoint written before the two groups (one group of every parameter) is refused by
    name instead of failing inside torch's optimizer."""
    out = tmp_path / "run"
    argv = ["--data", "synthetic", "--train-size", "16", "--test-size", "8", "--image-size", "16",
            "--model", "resnet8", "--batch-size", "8", "--epochs", "1", "--pictures", "0",
            "--no-progress", "--seeds", "1", "--method", "baseline", "--out", str(out)]
    assert train.main(argv) == 0
    path = out / "baseline" / "checkpoint.pt"
    ck = torch.load(path, weights_only=True)
    groups = ck["optimizer"]["param_groups"]
    one = {k: v for k, v in groups[0].items() if k not in ("name", "lr_scale")}
    one["params"] = [p for g in groups for p in g["params"]]
    ck["optimizer"]["param_groups"] = [one]
    ck["scheduler"]["base_lrs"] = ck["scheduler"]["base_lrs"][:1]
    torch.save(ck, path)
    with pytest.raises(SystemExit, match="optimizer has 1 parameter group"):
        train.main([*argv[:-4], "--epochs", "2", "--resume", "--resume-override", "--out",
                    str(out)])


@pytest.fixture(autouse=True)
def torch_backend():
    with attnfast.use_backend("torch"):
        yield


def test_readme_states_nothing_was_run():
    text = README.read_text()
    section = text[text.index("## Every experiment of the papers"):]
    assert re.search(r"None of these has been run here", section)
