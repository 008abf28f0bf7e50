"""Study specs: grid expansion, cell keys, profiles, and one-line errors (exit 2, nothing written)."""
import pytest
import yaml

from pathlib import Path

from conftest import ROOT, TINY_STUDY, store_files
from aa_study.cli import main
from pipelines.spec import cell_key, load_study, parse_study


BASE = yaml.safe_load(TINY_STUDY)


def _with(**changes):
    spec = yaml.safe_load(TINY_STUDY)
    for dotted, value in changes.items():
        node = spec
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        if value is _DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return spec


_DELETE = object()


def test_tiny_study_expands_to_cells_times_seeds():
    study = parse_study(BASE, "cpu")
    assert len(study.cells) == 4 and len(study.trials) == 8
    assert study.experiment == "tiny-cpu"
    assert {t.seed for t in study.trials} == {0, 1}
    for t in study.trials:
        assert t.config["upsilon"] == t.config["kappa"]  # `upsilon: kappa` ties them
        assert cell_key(t.config) == t.cell


def test_kappa_zero_is_one_cell_whatever_the_encoding():
    study = parse_study(_with(grid__kappa=[0, 0.5]), "cpu")
    zero = [c for c in study.cells.values() if c["kappa"] == 0]
    assert len(zero) == 1 and zero[0]["pos_enc"] == "none"
    assert len(study.cells) == 3


def test_cell_key_is_canonical_and_ignores_where_and_how_fast():
    study = parse_study(BASE, "cpu")
    cfg = dict(study.trials[0].config)
    assert cell_key({**cfg, "kappa": 0.25}) == cell_key({**cfg, "kappa": 0.250})
    assert cell_key({**cfg, "seed": 7, "device": "cuda", "compile": True}) == cell_key(cfg)
    assert cell_key({**cfg, "data": {**cfg["data"], "root": "/elsewhere"}}) == cell_key(cfg)
    assert cell_key({**cfg, "epochs": 3}) != cell_key(cfg)
    assert cell_key({**cfg, "pos_enc": "sine2d"}) != cell_key(cfg)


def test_profile_overrides_fields_and_replaces_axes():
    spec = _with(profiles={"cpu": {}, "gpu": {"grid": {"kappa": [0.5]}, "seeds": 3, "train": {"epochs": 5}}})
    study = parse_study(spec, "gpu")
    assert len(study.cells) == 2 and len(study.trials) == 6 and study.experiment == "tiny-gpu"
    assert all(t.config["epochs"] == 5 and t.config["data"]["image_size"] == 16 for t in study.trials)


BAD_SPECS = [
    ("unknown top-level key", _with(epochz=3), "epochz: unknown key"),
    ("missing name", _with(name=_DELETE), "name: required"),
    ("name with a slash", _with(name="a/b"), "name:"),
    ("kappa > 1", _with(grid__kappa=[0.5, 1.5]), "grid.kappa: values must be numbers in [0, 1]"),
    ("negative kappa", _with(grid__kappa=[-0.1]), "grid.kappa"),
    ("kappa a string", _with(grid__kappa=["half"]), "grid.kappa"),
    ("unknown encoding", _with(grid__pos_enc=["relative", "rotary"]), "grid.pos_enc: unknown encoding 'rotary'"),
    ("unknown architecture", _with(grid__arch=["resnet9000"]), "grid.arch: unknown architecture"),
    ("unknown axis", _with(grid__depth=[1]), "grid.depth: unknown axis"),
    ("empty axis", _with(grid__num_heads=[]), "grid.num_heads: empty list"),
    ("empty grid", _with(grid={}), "grid: required"),
    ("duplicate values", _with(grid__kappa=[0.5, 0.50]), "grid.kappa: duplicate values"),
    ("heads do not divide", _with(grid__num_heads=[3]), "not divisible by num_heads=3"),
    ("zero heads", _with(grid__num_heads=[0]), "grid.num_heads: values must be positive integers"),
    ("negative seed", _with(seeds=[0, -1]), "seeds: seeds must be integers >= 0"),
    ("duplicate seeds", _with(seeds=[1, 1]), "seeds: duplicate seeds"),
    ("zero seeds", _with(seeds=0), "seeds: a count must be >= 1"),
    ("gpu fraction > 1", _with(resources__gpu=1.5), "resources.gpu"),
    ("negative cpu", _with(resources__cpu=-1), "resources.cpu: must be a number > 0"),
    ("unknown resource", _with(resources__tpu=1), "resources.tpu: unknown resource"),
    ("epochs not an int", _with(train__epochs="ten"), "train.epochs: must be a positive integer"),
    ("axis under train", _with(train__kappa=0.5), "train.kappa: is a grid axis"),
    ("unknown train key", _with(train__learning_rate=0.1), "train.learning_rate: unknown setting"),
    ("unknown optim key", _with(train__optim={"lr": 0.1}), "train.optim: unknown optimiser settings"),
    ("unknown recipe", _with(train__recipe="fast"), "train.recipe: must be one of"),
    ("unknown compile mode", _with(train__compile="fastest"), "train.compile: must be true, false or a torch.compile"),
    ("checkpoint_every not a duration", _with(checkpoint_every="often"),
     "checkpoint_every: must be an integer of epochs >= 0 (0: no checkpoints) or a duration such as 90s, 5m, 1h"),
    ("checkpoint_every negative", _with(checkpoint_every=-1), "checkpoint_every: must be an integer of epochs >= 0"),
    ("zero_init_residual not a bool", _with(train__zero_init_residual="yes"), "train.zero_init_residual: must be a bool"),
    ("zero_init_residual on the WRN", _with(grid__arch=["aa_wide_resnet28_10"], train__zero_init_residual=True),
     "train.zero_init_residual: is for the AA-ResNets"),
    ("missing dataset root", _with(train__dataset="fashion_mnist", train__data={"root": "/no/such/dir"}),
     "train.data: fashion_mnist root /no/such/dir does not exist"),
    ("unknown synthetic task", _with(train__data={"task": "xor"}), "train.data.task: unknown synthetic task"),
    ("min_gap on another task", _with(train__data={"task": "same_corners", "min_gap": 3}),
     "min_gap applies to pair_orientation only"),
    ("min_gap too large", _with(train__data={"task": "pair_orientation", "image_size": 32, "min_gap": 9}),
     "min_gap must be an integer in 1..7"),
    ("negative max_failures", _with(max_failures=-1), "max_failures: must be an integer >= 0"),
    ("unknown scheduler", _with(scheduler="hyperband"), "scheduler: must be one of fifo, asha"),
    ("unknown profile", _with(default_profile="tpu"), "profile: 'tpu' is not defined"),
    ("unknown key in profile", _with(profiles={"cpu": {"seedz": 2}}), "profiles.cpu.seedz: unknown key"),
    ("unknown report", _with(report="table99"), "report: must name report layouts"),
    ("unknown task", _with(task="segmentation"), "task: must be one of classification"),
]


@pytest.mark.parametrize("what,spec,message", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_bad_spec_exits_2_with_one_line_and_writes_nothing(workdir, capsys, what, spec, message):
    path = workdir / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    before = store_files(workdir)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aa-study run: error:") and "\n" not in err, err
    assert message in err, err
    assert "Traceback" not in err
    assert store_files(workdir) == before  # no store, no Ray storage


@pytest.mark.parametrize("text,message", [
    ("name: x\ngrid: [1, 2\n", "not valid YAML at line"),
    ("- just\n- a list\n", "a study must be a YAML mapping"),
    ("", "a study must be a YAML mapping"),
    ("name: x\ngrid: {kappa: !!python/object/apply:os.system [echo hi]}\n", "not valid YAML"),
])
def test_bad_yaml_is_one_line(workdir, capsys, text, message):
    path = workdir / "bad.yaml"
    path.write_text(text)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err


def test_missing_study_file(workdir, capsys):
    assert main(["run", str(workdir / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unreachable_tracking_server_exits_2_before_ray(tiny_study, workdir, capsys):
    assert main(["run", str(tiny_study), "--tracking-uri", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "tracking-uri: http://127.0.0.1:9 is unreachable" in err
    assert store_files(workdir) == ["tiny.yaml"]


def test_deprecated_file_store_is_refused(tiny_study, capsys):
    assert main(["run", str(tiny_study), "--tracking-uri", "file:///tmp/mlruns"]) == 2
    assert "file store is deprecated" in capsys.readouterr().err


def test_gpu_fraction_without_gpu_in_cluster_exits_2(workdir, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    path = workdir / "gpu.yaml"
    path.write_text(yaml.safe_dump(_with(resources={"cpu": 1, "gpu": 0.25})))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "resources.gpu: 0.25 GPU per trial requested but this machine has no GPU" in err
    assert store_files(workdir) == ["gpu.yaml"]
    import ray
    assert not ray.is_initialized()  # refused before a local Ray was started


def test_shipped_studies_validate_in_every_profile():
    from pathlib import Path

    root = ROOT / "studies"
    for path in sorted(root.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        for profile in raw.get("profiles", {}):
            study = load_study(path, profile)
            assert study.trials, (path.name, profile)


@pytest.mark.parametrize("profile", ["cpu", "gpu", "paper"])
def test_figure5_shares_table5_runs(profile):
    from pathlib import Path

    root = ROOT / "studies"
    t5 = load_study(root / "table5.yaml", profile)
    f5 = load_study(root / "figure5.yaml", profile)
    assert f5.experiment == t5.experiment
    assert set(t5.cells) < set(f5.cells)  # every Table 5 cell is a Figure 5 cell: run once, used twice
    assert {c["pos_enc"] for k, c in f5.cells.items() if k not in t5.cells} == {"none"}


def test_paper_profiles_replace_data_of_another_dataset_and_clear_optim():
    """A profile naming another dataset must not inherit the base's data options (a synthetic `task` passed
    to ImageNet), and `optim: {}` leaves the recipe's own learning rate."""
    from pipelines.spec import load_study

    s = load_study(ROOT / "studies/table5.yaml", "paper")
    assert s.train["dataset"] == "imagenet" and "task" not in s.train["data"]
    assert s.train["data"]["image_size"] == 224 and s.train["optim"] == {}
    s = load_study(ROOT / "studies/table7.yaml", "paper")
    assert set(s.train["data"]) == {"root", "min_size", "num_workers"}
    s = load_study(ROOT / "studies/table5.yaml", "gpu")  # same dataset: data still merges
    assert s.train["data"]["task"] == "same_corners" and s.train["optim"] == {"base_lr": 0.03}




def _shipped_keys():
    out = {}
    for f in sorted((ROOT / "studies").glob("*.yaml")):
        for prof in yaml.safe_load(f.read_text()).get("profiles") or {}:
            out[f"{f.name}:{prof}"] = sorted({t.cell for t in load_study(str(f), prof).trials})
    return out


def test_cell_keys_of_the_shipped_studies_are_pinned():
    """The keys every store already holds runs under: a change here orphans finished runs (a relaunch would
    retrain them), so it needs a key version and a migration, never a silent edit of the golden file."""
    import json
    assert _shipped_keys() == json.loads((Path(__file__).resolve().parent / "golden_cell_keys.json").read_text())


def test_a_new_setting_at_its_default_changes_no_key(monkeypatch):
    """Adding a training setting whose default keeps the old behaviour leaves every cell key as it was (the
    upgrade that orphaned every finished run twice, grad_clip then task); setting it to something else in a
    study makes new cells."""
    from pipelines import spec as S

    study = parse_study(yaml.safe_load(TINY_STUDY), "cpu")
    before = [t.cell for t in study.trials]
    monkeypatch.setitem(S.TRAIN_DEFAULTS, "label_noise", None)
    assert [t.cell for t in parse_study(yaml.safe_load(TINY_STUDY), "cpu").trials] == before
    spec = yaml.safe_load(TINY_STUDY)
    spec["train"]["label_noise"] = 0.1
    changed = [t.cell for t in parse_study(spec, "cpu").trials]
    assert not set(changed) & set(before) and len(set(changed)) == len(set(before))
    spec["train"]["label_noise"] = None  # written out at its default: the same cells as not writing it
    assert [t.cell for t in parse_study(spec, "cpu").trials] == before


def test_settings_name_what_aa_modules_builds_and_reading_a_study_imports_no_torch():
    """pipelines/settings.py lists the architectures and encodings by name so that reading a study needs no torch
    (a relaunch with nothing to run answers in seconds); the lists must be aa_modules' own."""
    import subprocess
    import sys

    import aa_modules
    from pipelines import settings

    assert set(settings.ARCHITECTURE_NAMES) == set(aa_modules.ARCHITECTURES)
    from aa_modules.detection import BACKBONES
    assert {a for a, i in settings.ARCHITECTURES.items() if i.detection_backbone} == set(BACKBONES)
    assert tuple(settings.POS_ENCODINGS) == tuple(aa_modules.POS_ENCODINGS)
    code = ("import sys; from pipelines.spec import load_study; "
            f"s = load_study({str(ROOT / 'studies/table5.yaml')!r}, 'cpu'); "
            "print(len(s.trials), 'torch' in sys.modules, 'pytorch_lightning' in sys.modules, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[1:] == ["False", "False", "False"], out.stdout


def test_checkpoint_every_takes_epochs_or_a_duration():
    from pipelines.settings import CHECKPOINT_EVERY, checkpoint_policy

    assert checkpoint_policy(0) == ("epochs", 0) and checkpoint_policy(3) == ("epochs", 3)
    assert checkpoint_policy("90s") == ("seconds", 90) and checkpoint_policy("5m") == ("seconds", 300)
    assert checkpoint_policy("1.5h") == ("seconds", 5400) and checkpoint_policy(" 2 min ") == ("seconds", 120)
    assert checkpoint_policy(CHECKPOINT_EVERY) == ("seconds", 300)
    for bad in ("0s", "5", "m", "5 minutes", True, 1.5, None):
        with pytest.raises(ValueError):
            checkpoint_policy(bad)


def _laughs(levels=9):
    """A 'billion laughs' description: 9 aliases of 9 aliases ..., a few hundred bytes, 9^9 strings expanded."""
    lines = ['description:', '  a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


HOSTILE = [
    ("aliases that expand past the limit", TINY_STUDY.replace("description: a 4-cell x 2-seed study small enough for CI\n", "") + _laughs(),
     "expands to more than"),
    ("deep nesting", TINY_STUDY + "notes: " + "[" * 100_000 + "]" * 100_000 + "\n", "nest"),
    ("a control character", TINY_STUDY + "description: \"a\x07b\"\n", "control character"),
    ("a NUL byte in the name", TINY_STUDY.replace("name: tiny", 'name: "ti\\0ny"'), "name:"),
    ("an experiment that climbs out of the home", TINY_STUDY + "experiment: ../../escaped\n", "experiment:"),
    ("an absolute experiment", TINY_STUDY + "experiment: /tmp/elsewhere\n", "experiment:"),
    ("a study file over 1 MiB", TINY_STUDY + "description: " + "x" * (1 << 20) + "\n", "at most 1,048,576"),
]


@pytest.mark.parametrize("what,text,message", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_study_files_are_refused_in_one_line_before_any_work(workdir, capsys, what, text, message):
    """Size, control characters and alias expansion are checked before the YAML is used, and every name that becomes
    a path stays one folder name: exit 2, one line, nothing written (so nothing outside AA_STUDY_HOME either)."""
    path = workdir / "hostile.yaml"
    path.write_text(text)
    before = store_files(workdir.parent)
    assert main(["status", str(path)]) == 2
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(message in line for line in err), err
    assert store_files(workdir.parent) == before
