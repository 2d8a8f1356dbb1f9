"""Configuration: the paper's defaults, YAML + --set overrides, clear errors, the shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hyperct.errors import ConfigError
from hyperct.training.config import DEFAULTS, FIELDS, load_config, parse_override, resolve

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# the message names the file, before or after the cause
_NAMES_FILE = r"^(?=.*c\.yaml)"


def test_defaults_are_the_papers_protocol():
    cfg = load_config(None)
    assert (
        cfg["optim"]["name"] == "adamw" and cfg["optim"]["lr"] == 1e-5 and cfg["optim"]["weight_decay"] == 0
    )
    assert cfg["train"]["epochs"] == 20 and cfg["train"]["batch_size"] == 8
    assert (
        cfg["schedule"]["name"] == "step"
        and cfg["schedule"]["step_size"] == 15
        and cfg["schedule"]["gamma"] == 0.1
    )
    assert cfg["model"]["train_backbone"] is False and cfg["model"]["backbone"] == "vitb16"
    assert (cfg["model"]["rank"], cfg["model"]["alpha"], cfg["model"]["task_dim"]) == (16, 16.0, 512)
    assert (cfg["model"]["pos_dim"], cfg["model"]["hyper_hidden"]) == (64, 64)
    assert len(cfg["model"]["targets"]) == 6


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-4\ntrain:\n  epochs: 3\ndata:\n  train: {type: manifest, csv: a.csv}\n")
    cfg = load_config(
        path, ["optim.lr=3e-4", "optim.betas=[0.8, 0.99]", "data.train.csv=b.csv", "train.micro_batch=null"]
    )
    assert cfg["optim"]["lr"] == 3e-4 and cfg["train"]["epochs"] == 3  # PyYAML's '1e-4' string is a number
    assert cfg["optim"]["betas"] == [0.8, 0.99] and cfg["data"]["train"] == {
        "type": "manifest",
        "csv": "b.csv",
    }
    assert (
        cfg["train"]["micro_batch"] is None and cfg["train"]["batch_size"] == DEFAULTS["train"]["batch_size"]
    )
    assert parse_override("seed=7") == ("seed", 7) and parse_override("model.backbone=demo") == (
        "model.backbone",
        "demo",
    )


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        (
            "optim:\n  learning_rate: 1e-4\n",
            [],
            _NAMES_FILE + r".*unknown configuration field 'optim.learning_rate'",
        ),
        ("optim:\n  lr: -1\n", [], _NAMES_FILE + r".*optim.lr: expected a positive number, got -1"),
        ("train:\n  epochs: 2.5\n", [], r"train.epochs: expected a positive integer"),
        ("schedule:\n  name: linear\n", [], r"schedule.name: expected one of step, cosine, constant"),
        ("model:\n  backbone: vitl16\n", [], r"model.backbone: expected one of vitb16, demo"),
        ("model:\n  targets: [q_proj, qkv]\n", [], r"model.targets.*unknown: qkv"),
        (
            "data:\n  tasks: [pleural_efusion]\n",
            [],
            r"data.tasks.*'pleural_efusion'.*did you mean 'pleural_effusion'",
        ),
        ("- a\n- b\n", [], r"top level must be a mapping"),
        ("optim: {lr: [1\n", [], r"not a readable YAML file"),
        ("", ["optim.lrr=1"], r"unknown configuration field 'optim.lrr'.*did you mean 'optim.lr'"),
        ("", ["optim.lr"], r"is not FIELD=VALUE"),
        ("", ["train.batch_size=eight"], r"train.batch_size: expected a positive integer, got 'eight'"),
    ],
)
def test_bad_configs_name_file_and_field(tmp_path, text, overrides, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, overrides)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")


def test_every_field_has_a_check():
    cfg = resolve({})
    assert set(FIELDS) >= {"optim.lr", "train.epochs", "data.cache_dtype", "model.train_backbone"}
    assert cfg["seed"] == 0


def test_shipped_configs_are_valid():
    paper = load_config(CONFIGS / "paper.yaml")
    defaults = load_config(None)
    for section in ("optim", "schedule"):
        assert paper[section] == defaults[section]
    assert paper["train"]["epochs"] == 20 and paper["model"]["train_backbone"] is False
    assert paper["model"]["backbone_weights"]  # external DINOv3 weights
    demo = load_config(CONFIGS / "demo.yaml")
    # stage 2 of the demo: the backbone is frozen (as in the paper) and comes from stage 1,
    # whose pretraining config uses the same phantoms and cache
    assert demo["model"]["backbone"] == "demo" and demo["model"]["train_backbone"] is False
    assert demo["model"]["demo"] is True and demo["model"]["include_backbone"] is True
    stage1 = yaml.safe_load((CONFIGS / "demo_backbone.yaml").read_text())
    assert stage1["backbone"] == demo["model"]["backbone"]
    assert (
        stage1["data"]["train"] == demo["data"]["train"] and stage1["data"]["valid"] == demo["data"]["valid"]
    )
    assert stage1["data"]["cache_dir"] == demo["data"]["cache_dir"]
    assert demo["model"]["backbone_weights"] == "runs/demo-backbone"
    # the shipped v0.2 is reproduced by scripts/train_demo_v0.sh: stage 1 v0, then stage 2 on it
    v0 = (CONFIGS.parent / "scripts" / "train_demo_v0.sh").read_text()
    assert '--config configs/demo_backbone.yaml --out "$RUNS/demo-backbone"' in v0
    assert "--config configs/demo.yaml" in v0 and "model.backbone_weights=$RUNS/demo-backbone" in v0
    # the one command (scripts/train_demo.sh) runs the v1 procedure: stage 1 v1, then stage 2 v1 on it
    script = (CONFIGS.parent / "scripts" / "train_demo.sh").read_text()
    assert "configs/demo_backbone_v1.yaml" in script and "configs/demo_v1.yaml" in script
    assert (
        'BACKBONE="$RUNS/demo-backbone-v1w-pair-heart"' in script
        and "model.backbone_weights=$BACKBONE" in script
    )
    from hyperct.training.pretrain import load_pretrain_config

    v1 = load_config(CONFIGS / "demo_v1.yaml")
    stage1_v1 = load_pretrain_config(CONFIGS / "demo_backbone_v1.yaml")
    assert (
        v1["model"]["backbone_weights"] == "runs/demo-backbone-v1" and v1["model"]["train_backbone"] is False
    )
    assert v1["train"]["task_draw"] == "positive"
    assert stage1_v1["data"]["valid"] == v1["data"]["valid"] == demo["data"]["valid"]
    assert stage1_v1["optim"]["bag_loss_weight"] > 0 and stage1_v1["data"]["fresh_seeds"]
    # stage 1 v1 starts from v0's stage-1 backbone, which the script trains first into that folder
    assert stage1_v1["init"] == "runs/demo-backbone-v0" and stage1_v1["data"]["train"]["pair"] == "drop_one"
    assert '--config configs/demo_backbone.yaml --out "$RUNS/demo-backbone-v0"' in script
    assert '--init "$RUNS/demo-backbone-v0"' in script
    # fresh training seeds start far above the validation (200000..) and test (300000..) seeds
    assert stage1_v1["data"]["train"]["first_seed"] >= 1_000_000
    tr, va = demo["data"]["train"], demo["data"]["valid"]
    assert tr["type"] == va["type"] == "phantom" and tr["matrix"] in (192, 256)
    train_seeds = set(range(tr["first_seed"], tr["first_seed"] + tr["count"]))
    valid_seeds = set(range(va["first_seed"], va["first_seed"] + va["count"]))
    assert not train_seeds & valid_seeds
    assert demo["data"]["cache_dir"] and 3e-4 <= demo["optim"]["lr"] <= 1e-3


def test_typed_config_is_the_validated_mapping():
    from hyperct.training.config import TrainConfig, load_train_config

    for name in ("paper", "demo", "demo_v1"):
        mapping = load_config(CONFIGS / f"{name}.yaml", ["optim.lr=2e-4"])
        typed = load_train_config(CONFIGS / f"{name}.yaml", ["optim.lr=2e-4"])
        assert typed.to_dict() == mapping and list(typed.to_dict()) == list(mapping)
        assert typed.optim.lr == 2e-4 and typed.train.epochs == mapping["train"]["epochs"]
        assert (
            typed.data.train == mapping["data"]["train"]
            and typed.model.targets == mapping["model"]["targets"]
        )
    assert TrainConfig().to_dict() == DEFAULTS
    partial = TrainConfig.from_dict({"schedule": {"name": "cosine"}})
    assert (
        partial.schedule.name == "cosine" and partial.schedule.step_size == DEFAULTS["schedule"]["step_size"]
    )
    assert TrainConfig.coerce(partial) is partial


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"optim": {"lr": 0}}, r"optim.lr: expected a positive number, got 0"),
        ({"train": {"epoch": 3}}, r"unknown configuration field 'train.epoch'.*did you mean 'train.epochs'"),
        ({"model": 3}, r"model: expected a mapping of fields, got 3"),
        (
            {"seed": -1, "optim": {"lr": 0}},
            r"seed: expected an integer >= 0",
        ),  # the first bad field, in declaration order
    ],
)
def test_typed_config_rejects_what_load_config_rejects(mapping, message):
    from hyperct.training.config import TrainConfig

    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(mapping, source="x.yaml")
    with pytest.raises(ConfigError, match=message):
        resolve(mapping)


def test_a_section_replaced_by_an_override_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model: expected a mapping of fields, got 3"):
        load_config(None, ["model=3"])


def _stage1_segments(script: str, name: str = "STAGE1_SEGMENTS") -> list[tuple[int, int, list[str]]]:
    """scripts/train_demo.sh's replay of the kept stage-1 run: (until, epochs, --set values) after
    v1w's first segment (``SLICES_SEGMENTS``: of the heart-slices phase after epoch 94)."""
    block = script.split(f'{name}="', 1)[1].split('"', 1)[0]
    out = []
    for line in block.strip().splitlines():
        until, epochs, *rest = line.split()
        out.append((int(until), int(epochs), [w for w in rest if w != "--set"]))
    return out


def test_train_demo_replays_the_kept_stage1_run_as_it_was_recorded():
    """The one command's stage 1 stops, resumes and changes settings where the best backbone's run
    did (progress/demo-backbone-v1w-pair-heart: its log and its pretrain_config.before-epoch-N.yaml):
    a resume starts a new block of seeds, so a replay that stops elsewhere trains on other phantoms."""
    import json

    from hyperct.training.pretrain import load_pretrain_config

    root = CONFIGS.parent
    script = (root / "scripts" / "train_demo.sh").read_text()
    assert '--config configs/demo_backbone_v1.yaml --out "$RUNS/demo-backbone-v1"' in script
    assert "--until 42" in script and 'segment "$RUNS/demo-backbone-v1" 42 80' in script
    assert '--config configs/demo_backbone_v1w.yaml --out "$BACKBONE"' in script and "--until 7 " in script
    v1_log = [json.loads(x) for x in (root / "progress/demo-backbone-v1/log.jsonl").read_text().splitlines()]
    assert (
        v1_log[-1]["epoch"] == 42
        and load_pretrain_config(CONFIGS / "demo_backbone_v1.yaml")["optim"]["epochs"] == 80
    )

    segments = [(7, 40, [])] + _stage1_segments(script)
    _check_replay(root / "progress" / "demo-backbone-v1w-pair-heart", segments)
    # STAGE1_PHASE=slices: the same run copied at epoch 94, then the heart-slices phase
    assert 'copy_unless_past "$BACKBONE" "$SLICES" 0' in script
    slices = _stage1_segments(script, "SLICES_SEGMENTS")
    assert slices[0][0] > segments[-1][0] == 94
    _check_replay(root / "progress" / "demo-backbone-v1w-pair-heart-slices", segments + slices)
    # STAGE1_PHASE=stem (the default): the window arm from a copy at 160, the stem arm from one at 172
    assert slices[-1][0] == 160
    assert 'arm "$SLICES" "$WINDOW" 160 172 210 --add-hu-window -15 105\n' in script
    assert 'segment "$WINDOW" 172 210' in script
    assert 'arm "$WINDOW" "$STEM" 172 191 240 --add-conv-stem 16 --set optim.stem_lr_factor=10\n' in script
    assert 'replay "$STEM" "$STEM_SEGMENTS"' in script
    window = [(172, 210, [])]
    _check_replay(root / "progress" / "window-arm", segments + slices + window)
    stem = [(191, 240, ["optim.stem_lr_factor=10"])] + _stage1_segments(script, "STEM_SEGMENTS")
    assert stem[1:] == [(191, 240, []), (204, 240, [])]
    # (the stem arm went on after epoch 204, v0.6's backbone: this replay ends there)
    _check_replay(root / "progress" / "stem-arm", segments + slices + window + stem, last=204)
    # STAGE1_PHASE=metal: the stem arm on to 224 in a copy, then the metal window from a copy at 224
    assert 'copy_unless_past "$STEM" "$STEM_ON" 204' in script
    assert 'segment "$STEM_ON" 224 240\n' in script
    assert 'arm "$STEM_ON" "$METAL" 224 280 280 --add-hu-window 950 1000\n' in script
    assert 'segment "$METAL" 280 280\n' in script
    metal = [(224, 240, []), (280, 280, [])]
    _check_replay(root / "progress" / "metal-arm", segments + slices + window + stem + metal)
    # STAGE1_PHASE=long: the metal arm's 280 in a copy, re-planned to 360, cut at 317 and 333, then to 344
    assert 'arm "$METAL" "$LONG" 280 317 360\n' in script and 'replay "$LONG" "$LONG_SEGMENTS"' in script
    long = [(317, 360, [])] + _stage1_segments(script, "LONG_SEGMENTS")
    assert long[1:] == [(333, 360, []), (344, 344, [])]
    _check_replay(root / "progress" / "long-arm", segments + slices + window + stem + metal + long)


_FAKE_HYPERCT = """#!/usr/bin/env bash
# records its arguments; a pretrain run "reaches" --until (else --epochs), a train run its
# train.epochs setting, as its state.json says; a train run leaves the files a run folder has
echo "hyperct $*" >> "$CALLS"
command=$1 run= until= epochs=
while [ $# -gt 0 ]; do
  case "$1" in
    --resume | --out) run=$2 ;; --until) until=$2 ;; --epochs) epochs=$2 ;;
    train.epochs=*) epochs=${1#train.epochs=} ;;
  esac
  shift
done
[ "$command" = evaluate ] && exit 0
if [ -n "${until:-$epochs}" ]; then
  mkdir -p "$run/last" && echo "{\\"epoch\\": ${until:-$epochs}}" > "$run/last/state.json"
fi
if [ "$command" = train ]; then mkdir -p "$run/best" && touch "$run/config.yaml" "$run/log.jsonl"; fi
"""
_FAKE_PYTHON = """#!/usr/bin/env bash
# the probe gate stops the script here (unless PROBE_PASSES=1); any other python runs
if [ "$1" = benchmarks/probe_backbone.py ]; then
  echo "probe $*" >> "$CALLS"
  [ "${{PROBE_PASSES:-0}}" = 1 ] && exit 0
  exit 3
fi
exec {python} "$@"
"""


def _train_demo_calls(
    tmp_path, runs: dict[str, int], phase: str | None, *, stage2: dict[str, str] | None = None
) -> list[str]:
    """Run scripts/train_demo.sh up to its probe gate with a fake ``hyperct`` that records its calls,
    the stage-1 folders ``runs`` (name: epoch reached) made beforehand, STAGE1_PHASE=``phase`` (None:
    unset, the script's default); returns the recorded calls. ``stage2`` (environment settings): the
    probe passes (GATE=0) and the script runs to its end (stage 2, the reports, not shipped)."""
    import os
    import subprocess
    import sys

    for name, epoch in runs.items():
        (tmp_path / "runs" / name / "last").mkdir(parents=True, exist_ok=True)
        (tmp_path / "runs" / name / "last" / "state.json").write_text(f'{{"epoch": {epoch}}}')
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "hyperct").write_text(_FAKE_HYPERCT)
    (bin_dir / "python").write_text(_FAKE_PYTHON.format(python=sys.executable))
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    calls = tmp_path / "calls.txt"
    calls.write_text("")
    env = dict(
        os.environ,
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        RUNS=str(tmp_path / "runs"),
        CALLS=str(calls),
    )
    for name in ("STAGE1_PHASE", "STAGE2_EPOCHS", "GATE", "SHIP", "VERSION"):
        env.pop(name, None)
    if phase is not None:
        env["STAGE1_PHASE"] = phase
    if stage2 is not None:
        env.update(stage2, PROBE_PASSES="1", GATE="0")
    script = CONFIGS.parent / "scripts" / "train_demo.sh"
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == (3 if stage2 is None else 0), done.stderr
    if stage2 is not None:
        assert "target not met: assets/demo_model left as it is" in done.stdout
    return calls.read_text().replace(str(tmp_path / "runs") + "/", "").splitlines()


_BEFORE_METAL = {
    "demo-backbone-v1": 42,
    "demo-backbone-v1w-pair-heart": 94,
    "demo-backbone-v1w-pair-heart-slices": 160,
    "demo-backbone-window": 172,
    "demo-backbone-stem": 204,
}


def test_train_demo_metal_phase_goes_on_from_copies_of_the_stem_arm(tmp_path):
    """STAGE1_PHASE=metal: the stem arm (v0.6's backbone, at 204) is copied and trained on to 224, that
    copy is copied again and given the metal window, trained to 280; the stem arm itself stays as it is;
    the probe reads the metal arm."""
    (tmp_path / "runs" / "demo-backbone-stem").mkdir(parents=True)
    (tmp_path / "runs" / "demo-backbone-stem" / "mark").write_text("v0.6's backbone")
    calls = _train_demo_calls(tmp_path, _BEFORE_METAL, "metal")
    assert calls[:2] == [
        "hyperct pretrain --resume demo-backbone-stem-224 --until 224 --epochs 240 --set data.prepare_workers=1",
        "hyperct pretrain --resume demo-backbone-metal --add-hu-window 950 1000 --epochs 280 --until 280 "
        "--set data.prepare_workers=1 --set data.keep_blocks=false",
    ]
    assert len(calls) == 3 and calls[2].startswith(
        "probe benchmarks/probe_backbone.py --backbone demo-backbone-metal "
    )
    runs = tmp_path / "runs"
    assert (runs / "demo-backbone-stem" / "last" / "state.json").read_text() == '{"epoch": 204}'
    assert (runs / "demo-backbone-metal" / "mark").read_text() == "v0.6's backbone"
    # done: a rerun trains nothing more
    assert _train_demo_calls(tmp_path, {}, "metal") == [calls[2]]


def test_train_demo_long_phase_goes_on_from_a_copy_of_the_metal_arm(tmp_path):
    """STAGE1_PHASE=long: the metal arm (v0.7's backbone, at 280) is copied, trained with its schedule
    re-planned to 360 epochs, stopped where the kept run stopped (317, 333), then to 344 re-planned to
    end there; the metal arm stays as it is; the probe reads the long arm."""
    runs = dict(_BEFORE_METAL, **{"demo-backbone-stem-224": 224, "demo-backbone-metal": 280})
    (tmp_path / "runs" / "demo-backbone-metal").mkdir(parents=True)
    (tmp_path / "runs" / "demo-backbone-metal" / "mark").write_text("v0.7's backbone")
    calls = _train_demo_calls(tmp_path, runs, "long")
    assert calls[:3] == [
        "hyperct pretrain --resume demo-backbone-long --epochs 360 --until 317 "
        "--set data.prepare_workers=1 --set data.keep_blocks=false",
        "hyperct pretrain --resume demo-backbone-long --until 333 --epochs 360 --set data.prepare_workers=1",
        "hyperct pretrain --resume demo-backbone-long --until 344 --epochs 344 --set data.prepare_workers=1",
    ]
    assert len(calls) == 4 and calls[3].startswith(
        "probe benchmarks/probe_backbone.py --backbone demo-backbone-long "
    )
    folder = tmp_path / "runs"
    assert (folder / "demo-backbone-metal" / "last" / "state.json").read_text() == '{"epoch": 280}'
    assert (folder / "demo-backbone-long" / "mark").read_text() == "v0.7's backbone"
    # done: a rerun trains nothing more; the metal phase still stops at the metal arm
    assert _train_demo_calls(tmp_path, {}, "long") == [calls[3]]
    metal = _train_demo_calls(tmp_path, {}, "metal")
    assert len(metal) == 1 and metal[0].startswith(
        "probe benchmarks/probe_backbone.py --backbone demo-backbone-metal "
    )


_LONG_DONE = dict(
    _BEFORE_METAL,
    **{"demo-backbone-stem-224": 224, "demo-backbone-metal": 280, "demo-backbone-long": 344},
)


def test_train_demo_long_phase_stage2_goes_on_to_48_epochs_in_copies(tmp_path):
    """The default phase's stage 2 (v0.10): 24 epochs into runs/demo-v1-long-s3 (v0.8's run), then a
    copy of it resumed with the schedule re-planned to 36 epochs into runs/demo-v1-long-s3-e36 (v0.9's),
    then a copy of that re-planned to 48 into runs/demo-v1-long-s3-e48, as the kept progress/ runs
    ran; the thresholds and the test are the last copy's, and the runs before it stay where they
    ended. A rerun does not copy the finished runs again."""
    calls = _train_demo_calls(tmp_path, _LONG_DONE, None, stage2={})
    data = "--phantom-matrix 192 --cache cache/hyperct-demo"
    assert calls[1:] == [
        "hyperct train --config configs/demo_v1.yaml --out demo-v1-long-s3 --overwrite "
        "--set model.backbone_weights=demo-backbone-long --set train.image_stride=3 "
        "--set train.epochs=24 --set train.valid_every=12",
        "hyperct train --resume demo-v1-long-s3-e36 --set output_dir=demo-v1-long-s3-e36 "
        "--set train.epochs=36 --set train.valid_every=12",
        "hyperct train --resume demo-v1-long-s3-e48 --set output_dir=demo-v1-long-s3-e48 "
        "--set train.epochs=48 --set train.valid_every=12",
        f"hyperct evaluate --model demo-v1-long-s3-e48/best --data phantom:200:200000 {data} "
        "--out demo-v1-long-s3-e48/valid-report --write-thresholds --overwrite",
        f"hyperct evaluate --model demo-v1-long-s3-e48/best --data phantom:300:300000 {data} "
        "--thresholds model --out demo-v1-long-s3-e48/test-report --overwrite",
    ]
    runs = tmp_path / "runs"
    for run, epoch in (("demo-v1-long-s3", 24), ("demo-v1-long-s3-e36", 36), ("demo-v1-long-s3-e48", 48)):
        assert (runs / run / "last" / "state.json").read_text().strip() == f'{{"epoch": {epoch}}}'
        (runs / run / "mark").write_text("the finished run")
    again = _train_demo_calls(tmp_path, {}, None, stage2={})
    assert again[1:] == ["hyperct train --resume demo-v1-long-s3", *calls[2:]]
    for run in ("demo-v1-long-s3", "demo-v1-long-s3-e36", "demo-v1-long-s3-e48"):
        assert (runs / run / "mark").is_file()


@pytest.mark.parametrize(
    "epochs,final,absent",
    [("24", "demo-v1-long-s3", "demo-v1-long-s3-e36"), ("36", "demo-v1-long-s3-e36", "demo-v1-long-s3-e48")],
)
def test_train_demo_stage2_epochs_gives_earlier_versions_runs(tmp_path, epochs, final, absent):
    """STAGE2_EPOCHS=24 (v0.8): no re-planned copy; STAGE2_EPOCHS=36 (v0.9): the first re-plan only;
    the thresholds and the test are that run's. Any other value is refused before anything is
    trained."""
    calls = _train_demo_calls(tmp_path, _LONG_DONE, None, stage2={"STAGE2_EPOCHS": epochs})
    resumed = [] if epochs == "24" else [["hyperct", "train", "--resume", "demo-v1-long-s3-e36"]]
    assert [c.split()[:4] for c in calls[1:]] == [
        ["hyperct", "train", "--config", "configs/demo_v1.yaml"],
        *resumed,
        ["hyperct", "evaluate", "--model", f"{final}/best"],
        ["hyperct", "evaluate", "--model", f"{final}/best"],
    ]
    assert not (tmp_path / "runs" / absent).exists()
    import os
    import subprocess

    script = CONFIGS.parent / "scripts" / "train_demo.sh"
    env = dict(os.environ, RUNS=str(tmp_path / "fresh"), STAGE2_EPOCHS="60")
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "STAGE2_EPOCHS must be 24, 36 or 48, not '60'" in done.stderr
    assert not (tmp_path / "fresh").exists()


def test_train_demo_default_phase_trains_every_arm_on_a_fresh_machine(tmp_path):
    """With no runs yet, the default phase (long, the shipped v0.10) trains each stage-1 run in the
    order the kept runs grew (v0, v1, v1w, heart slices, window, stem, stem on to 224, metal, long) and
    probes the long arm: a later phase also trains the arms of the phases before it."""
    calls = _train_demo_calls(tmp_path, {}, None)
    runs = []
    for call in calls[:-1]:
        words = call.split()
        assert words[:2] == ["hyperct", "pretrain"], call
        for flag in ("--out", "--resume"):
            if flag in words and (run := words[words.index(flag) + 1]) not in runs:
                runs.append(run)
    assert runs == [
        "demo-backbone-v0",
        "demo-backbone-v1",
        "demo-backbone-v1w-pair-heart",
        "demo-backbone-v1w-pair-heart-slices",
        "demo-backbone-window",
        "demo-backbone-stem",
        "demo-backbone-stem-224",
        "demo-backbone-metal",
        "demo-backbone-long",
    ]
    assert calls[-1].startswith("probe benchmarks/probe_backbone.py --backbone demo-backbone-long ")


def test_train_demo_refuses_an_unknown_phase(tmp_path):
    """A mistyped STAGE1_PHASE stops the script before it trains anything, naming the phases."""
    import os
    import subprocess

    script = CONFIGS.parent / "scripts" / "train_demo.sh"
    env = dict(os.environ, RUNS=str(tmp_path / "runs"), STAGE1_PHASE="longg")
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "heart, slices, stem, metal or long, not 'longg'" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_train_demo_makes_an_arm_again_when_its_first_epoch_did_not_finish(tmp_path):
    """An arm interrupted before it finished an epoch after its change (the window already added to
    its weights) is copied again from its source, not given the window twice; STAGE1_PHASE=stem (v0.6)
    stops at the stem arm."""
    runs = dict(_BEFORE_METAL, **{"demo-backbone-stem-224": 224, "demo-backbone-metal": 224})
    (tmp_path / "runs" / "demo-backbone-metal").mkdir(parents=True)
    (tmp_path / "runs" / "demo-backbone-metal" / "window-added").write_text("")
    calls = _train_demo_calls(tmp_path, runs, "metal")
    assert calls[0] == (
        "hyperct pretrain --resume demo-backbone-metal --add-hu-window 950 1000 --epochs 280 --until 280 "
        "--set data.prepare_workers=1 --set data.keep_blocks=false"
    )
    assert not (tmp_path / "runs" / "demo-backbone-metal" / "window-added").exists()
    stem = _train_demo_calls(tmp_path, {}, "stem")
    assert len(stem) == 1 and stem[0].startswith(
        "probe benchmarks/probe_backbone.py --backbone demo-backbone-stem "
    )


def _check_replay(run, segments, last: int | None = None) -> None:
    """The segments (until, epochs, settings) stop where the kept run ``run`` cut a block of seeds
    short and run with the settings it had, up to its last epoch (or to epoch ``last`` of a run
    that went on after the epoch the script replays to)."""
    import json

    from hyperct.training.pretrain import load_pretrain_config

    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == list(range(1, len(log) + 1))
    if last is not None:
        assert len(log) >= last
        log = log[:last]
    assert segments[-1][0] == len(log)
    per_block = load_pretrain_config(CONFIGS / "demo_backbone_v1w.yaml")["data"]["block_epochs"]
    # every resume of the recorded run that cut a block short is where a segment ends
    starts = [e["epoch"] for i, e in enumerate(log) if i == 0 or e["block"] != log[i - 1]["block"]]
    cut = {b - 1 for a, b in zip(starts, starts[1:]) if b - a < per_block}
    assert cut and cut <= {u for u, _, _ in segments}, sorted(cut)
    # each segment runs with the settings the recorded run had for those epochs
    snapshots = sorted(
        (int(p.stem.rsplit("-", 1)[1]), p) for p in run.glob("pretrain_config.before-epoch-*.yaml")
    )
    cfg = load_pretrain_config(CONFIGS / "demo_backbone_v1w.yaml")
    for until, epochs, sets in segments:
        cfg = load_pretrain_config(None, dict(cfg, optim=dict(cfg["optim"], epochs=epochs)), sets)
        snap = next((p for n, p in snapshots if n > until), run / "pretrain_config.yaml")
        want = load_pretrain_config(snap)
        for part in ("optim", "backbone"):
            assert cfg[part] == want[part], (until, part)
        assert cfg["data"]["train"] == want["data"]["train"] and cfg["seed"] == want["seed"], until


def _pop_places(cfg: dict) -> tuple[str, str]:
    """Remove where a stage-2 run and its backbone lived (they differ between machines) from
    ``cfg``; returns their folder names (backbone, run)."""
    return Path(cfg["model"].pop("backbone_weights")).name, Path(cfg.pop("output_dir") or "").name


# the line of train_demo.sh that gives stage 2 its settings for the phases that train it on every 3rd image
_S3_PHASES = 'if [ "$PHASE" = stem ] || [ "$PHASE" = metal ] || [ "$PHASE" = long ]; then'


def _script_settings(script: str, marker: str) -> list[str]:
    """The --set values of the first ``STAGE2_SETTINGS=(...)`` line after ``marker`` in train_demo.sh."""
    import shlex

    after = script.split(marker, 1)[1].splitlines()[1:3]
    line = next(x for x in after if x.strip().startswith("STAGE2_SETTINGS=("))
    words = shlex.split(line.strip().removeprefix("STAGE2_SETTINGS=(").removesuffix(")"))
    sets = [w for w in words if w != "--set"]
    assert words.count("--set") == len(sets)
    return sets


def test_the_shipped_demo_model_was_trained_as_the_one_command_says():
    """assets/demo_model (v0.10) records the stage-2 configuration it was trained with:
    configs/demo_v1.yaml with the settings scripts/train_demo.sh adds for its default phase (long:
    stride 3, 24 epochs, validated every 12), then re-planned to 36 and 48 epochs in copies as the
    script's resumes do (GATE=0 SHIP=1 VERSION=0.10 bash scripts/train_demo.sh), apart from where the
    run and its backbone lived (the long arm at epoch 344: the run read a copy of it, runs/la-e344;
    the run was runs/demo-v1-long-s3-e48, where the script puts it); its version is the one the script gave it
    when shipping a model below the issue's target, not the config's 1.0. Keys added since then read
    as their defaults."""
    import json

    root = CONFIGS.parent
    script = (root / "scripts" / "train_demo.sh").read_text()
    sets = _script_settings(script, _S3_PHASES)
    assert sets == ["train.image_stride=3", "train.epochs=24", "train.valid_every=12"]
    replan = (
        'hyperct train --resume "$run" --set "output_dir=$run" --set "train.epochs=$epochs" '
        "--set train.valid_every=12"
    )
    assert replan in script and "  for epochs in 36 48; do" in script
    assert 'run="$STAGE2-e$epochs"' in script
    manifest = json.loads((root / "assets" / "demo_model" / "manifest.json").read_text())
    recorded = resolve(manifest["training"]["config"])
    config = load_config(CONFIGS / "demo_v1.yaml", overrides=[*sets, "train.epochs=48"])
    assert (
        manifest["model_version"] == "0.10"
        and recorded["model"]["version"] == config["model"]["version"] == "1.0"
    )
    assert _pop_places(recorded) == ("la-e344", "demo-v1-long-s3-e48")
    _pop_places(config)
    assert recorded == config
    assert manifest["training"]["epochs"] == 48
    assert config["data"]["train"]["count"] == 2400 and config["train"]["epochs"] == 48
    assert config["train"]["embedding_cache"] == "float16" and config["train"]["image_stride"] == 3
    assert "STAGE2_CONFIG=${STAGE2_CONFIG:-configs/demo_v1.yaml}" in script
    assert "PHASE=${STAGE1_PHASE:-long}" in script and 'STAGE2="$STAGE2-$PHASE-s3"' in script
    assert "STAGE2_EPOCHS=${STAGE2_EPOCHS:-48}" in script
    assert (
        'case "$PHASE" in slices) BACKBONE=$SLICES ;; stem) BACKBONE=$STEM ;; metal) BACKBONE=$METAL ;; long) BACKBONE=$LONG ;; esac'
        in script
    )
    assert "GATE=0 SHIP=1 VERSION=0.10 bash scripts/train_demo.sh" in script
    assert 'update_manifest(sys.argv[1], model_version=sys.argv[2])\' assets/demo_model "$VERSION"' in script


@pytest.mark.parametrize(
    "version,epochs,run", [("0.8", None, "demo-v1-long-s3"), ("0.9", 36, "demo-v1-long-s3-e36")]
)
def test_earlier_long_phase_versions_stage2_runs(version, epochs, run):
    """STAGE2_EPOCHS=24 trains stage 2 as v0.8's ran, STAGE2_EPOCHS=36 as v0.9's
    (progress/<run>/config.yaml, the configuration their manifests recorded): the script's settings
    for the long phase, with no re-plan and with the re-plan to 36 epochs."""
    root = CONFIGS.parent
    script = (root / "scripts" / "train_demo.sh").read_text()
    sets = _script_settings(script, _S3_PHASES)
    recorded = resolve(yaml.safe_load((root / "progress" / run / "config.yaml").read_text()))
    replan = [] if epochs is None else [f"train.epochs={epochs}"]
    config = load_config(CONFIGS / "demo_v1.yaml", overrides=[*sets, *replan])
    assert _pop_places(recorded) == ("la-e344", run)
    _pop_places(config)
    assert recorded == config
    assert (
        f"GATE=0 SHIP=1 VERSION={version} STAGE2_EPOCHS={epochs or 24} bash scripts/train_demo.sh" in script
    )


@pytest.mark.parametrize(
    "version,phase,backbone",
    [("0.7", "metal", "ma-e280"), ("0.6", "stem", "sa-e204")],
)
def test_earlier_s3_versions_stage2_is_their_phases(version, phase, backbone):
    """STAGE1_PHASE=metal and =stem train stage 2 as v0.7's and v0.6's ran
    (progress/demo-v1-<phase>-s3/config.yaml: the configuration their manifests recorded):
    configs/demo_v1.yaml with the settings the script adds for the stem, metal and long phases, on
    the metal arm at epoch 280 and the stem arm at epoch 204, into runs/demo-v1-<phase>-s3."""
    root = CONFIGS.parent
    script = (root / "scripts" / "train_demo.sh").read_text()
    sets = _script_settings(script, _S3_PHASES)
    run = f"demo-v1-{phase}-s3"
    recorded = resolve(yaml.safe_load((root / "progress" / run / "config.yaml").read_text()))
    config = load_config(CONFIGS / "demo_v1.yaml", overrides=sets)
    assert _pop_places(recorded) == (backbone, run)
    _pop_places(config)
    assert recorded == config
    assert f"GATE=0 SHIP=1 VERSION={version} STAGE1_PHASE={phase} bash scripts/train_demo.sh" in script


def test_v05s_stage2_is_configs_demo_v1_as_it_stands():
    """STAGE1_PHASE=slices trains stage 2 as v0.5's ran (progress/demo-v1-hslice/config.yaml: the
    configuration its manifest recorded): configs/demo_v1.yaml unchanged, on the heart-slices backbone,
    into runs/demo-v1-hslice."""
    root = CONFIGS.parent
    script = (root / "scripts" / "train_demo.sh").read_text()
    assert 'elif [ "$PHASE" = slices ]; then\n  STAGE2="$STAGE2-hslice"\nelse' in script
    recorded = resolve(yaml.safe_load((root / "progress" / "demo-v1-hslice" / "config.yaml").read_text()))
    config = load_config(CONFIGS / "demo_v1.yaml")
    assert _pop_places(recorded) == ("demo-backbone-v1w-pair-heart-slices", "demo-v1-hslice")
    _pop_places(config)
    assert recorded == config
    assert config["train"]["epochs"] == 12 and config["train"]["image_stride"] == 1


def test_v041s_stage2_is_configs_demo_v1_with_the_settings_the_heart_phase_restores():
    """STAGE1_PHASE=heart trains stage 2 as v0.4.1's ran (progress/demo-v1/config.yaml: the
    configuration its manifest recorded): configs/demo_v1.yaml with the settings the script adds for
    that phase, on the epoch-94 backbone, into runs/demo-v1."""
    root = CONFIGS.parent
    script = (root / "scripts" / "train_demo.sh").read_text()
    sets = _script_settings(script, "else  # v0.4.1's and v0.3's stage 2 as they ran")
    assert len(sets) == 2
    config = load_config(CONFIGS / "demo_v1.yaml", overrides=sets)
    recorded = resolve(yaml.safe_load((root / "progress" / "demo-v1" / "config.yaml").read_text()))
    assert _pop_places(recorded) == ("demo-backbone-v1w-pair-heart", "demo-v1")
    _pop_places(config)
    assert recorded == config


def test_configs_demo_v03_is_demo_v1_on_a_third_of_its_phantoms_and_steps():
    """configs/demo_v03.yaml (v0.3, shipped before v0.4) differs from configs/demo_v1.yaml only where its
    header says: 800 phantoms, 9 epochs, version 0.3, validated every 3 without the input-stage cache
    (as v0.4.1's stage 2 ran demo_v1.yaml)."""
    v03, v1 = load_config(CONFIGS / "demo_v03.yaml"), load_config(CONFIGS / "demo_v1.yaml")
    assert (v03["data"]["train"]["count"], v03["train"]["epochs"], v03["model"]["version"]) == (800, 9, "0.3")
    assert (v03["train"]["valid_every"], v03["train"]["embedding_cache"]) == (3, "off")
    for cfg in (v03, v1):
        cfg["data"]["train"].pop("count")
        cfg["train"].pop("epochs")
        cfg["train"].pop("valid_every")
        cfg["train"].pop("embedding_cache")
        cfg["model"].pop("version")
        cfg["model"].pop("backbone_weights")
    assert v03 == v1


def test_off_written_unquoted_is_the_word_off_where_a_field_offers_it(tmp_path):
    """YAML 1.1 reads an unquoted ``off`` as False: ``--set train.amp=off`` and ``embedding_cache: off``
    in a file mean the option "off", not a type error; a boolean stays an error where "off" is no option."""
    cfg = load_config(None, ["train.amp=off", "train.embedding_cache=off"])
    assert cfg["train"]["amp"] == "off" and cfg["train"]["embedding_cache"] == "off"
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  embedding_cache: off\n  amp: off\n")
    cfg = load_config(f)
    assert cfg["train"]["amp"] == "off" and cfg["train"]["embedding_cache"] == "off"
    with pytest.raises(ConfigError, match="train.task_draw"):
        load_config(None, ["train.task_draw=off"])
    with pytest.raises(ConfigError, match="model.train_backbone"):
        load_config(None, ["model.train_backbone=float16"])
