"""The config tree: presets load, the embedded default equals configs/tiny_cpu.yaml, bad keys and values fail
naming the dotted key and the allowed values, dotted --set overrides parse as YAML scalars."""

from __future__ import annotations

from pathlib import Path

import pytest
from primeflow.trainer.config import Config, ConfigError, dump_yaml, from_dict, load_config, to_dict

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_tiny_cpu_preset_is_the_embedded_default():
    assert to_dict(load_config(CONFIGS / "tiny_cpu.yaml")) == to_dict(load_config())


@pytest.mark.parametrize("name", ["qwen2.5-7b-prime.yaml", "qwen2.5-7b-prime-2node.yaml"])
def test_7b_presets_carry_the_papers_headline_hyperparameters(name):
    c = load_config(CONFIGS / name)
    assert (c.data.prompts_per_step, c.rollout.n, c.rollout.max_tokens) == (256, 4, 3072)
    assert (c.prime.beta, c.prm.update, c.prime.granularity, c.prime.reward_norm) == (0.05, "after", "token",
                                                                                       "batch_norm")
    assert (c.prm.optim.lr, c.prm.optim.grad_clip, c.prm.mini_batch_size) == (1e-6, 10.0, 256)
    assert (c.ppo.optim.lr, c.ppo.optim.grad_clip, c.ppo.clip, c.ppo.mini_batch_size) == (5e-7, 1.0, 0.2, 256)
    assert (c.filter.low, c.filter.high, c.train.steps) == (0.2, 0.8, 592)
    # 8 GPUs per node at TP=4: DP >= 2, and the AdamW moments must be sharded over it to fit 80 GB
    assert c.parallel.tp == 4 and c.parallel.distributed_optimizer
    # bf16 compute with fp32 masters; PRM and reference in one precision
    assert c.model.params_dtype == c.model.ref_dtype == "bfloat16" and c.rollout.sleep_between_steps
    # the paper's frozen SFT reference, stated in the file (the tiny default's is `policy`)
    assert c.prime.ref_type == "freeze"


def test_dotted_overrides_parse_yaml_scalars_and_lists():
    c = load_config(None, ["ppo.clip=0.28", "train.steps=7", "prime.mode=rloo", "filter.enabled=false",
                           "data.train_files=[a.jsonl, b.parquet]", "prm.optim.lr=3e-6", "run.dir=/tmp/x y"])
    assert c.ppo.clip == 0.28 and c.train.steps == 7 and c.filter.enabled is False
    assert c.data.train_files == ["a.jsonl", "b.parquet"] and c.prm.optim.lr == 3e-6 and c.run.dir == "/tmp/x y"
    assert c.prm.update == "none", "outcome-only RLOO has no PRM to update"


@pytest.mark.parametrize("override, message", [
    ("ppo.clipp=0.2", "unknown config key ppo.clipp; allowed keys under ppo: ['agg', 'clip', 'epochs'"),
    ("prm.update=sometimes", "prm.update: 'sometimes' is not allowed; allowed values: ['after', 'before', 'none']"),
    ("prime.ref_type=sft", "prime.ref_type: 'sft' is not allowed; allowed values: ['freeze', 'policy']"),
    ("model.transformer_impl=te",
     "model.transformer_impl: 'te' is not allowed; allowed values: ['auto', 'local', 'transformer_engine']"),
    ("train.steps=many", "train.steps: expected an integer, got 'many'"),
    ("rollout.n=1", "rollout.n: must be >= 2"),
    ("filter.low=0.9", "filter.low/filter.high: need 0 <= low <= high <= 1"),
    ("nosuch.key=1", "unknown config key nosuch; allowed keys under the top level"),
    ("ppo=3", "ppo: expected a mapping"),
    ("logging.tensorboard=maybe", "logging.tensorboard: expected true/false"),
])
def test_bad_overrides_name_the_key_and_allowed_values(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_bad_files_fail_clearly(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo: {clip: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_config(bad)


def test_resolved_config_round_trips_through_yaml(tmp_path):
    import yaml

    c = load_config(None, ["ppo.clip=0.3", "data.arithmetic={n: 50, digits: 3, ops: ['+', '*']}"])
    again = from_dict(yaml.safe_load(dump_yaml(c)))
    assert to_dict(again) == to_dict(c) and isinstance(again, Config)


def test_prm_and_reference_must_share_one_precision():
    with pytest.raises(ConfigError, match=r"model.ref_dtype: 'bfloat16' differs from model.params_dtype 'float32'"):
        load_config(None, ["model.ref_dtype=bfloat16", "prime.ref_type=freeze"])
    # no frozen reference to disagree with (the default ref_type=policy): allowed
    assert load_config(None, ["model.ref_dtype=bfloat16"]).model.ref_dtype == "bfloat16"
    both = load_config(None, ["model.params_dtype=bfloat16", "model.ref_dtype=bfloat16"])
    assert both.model.params_dtype == "bfloat16"


def test_the_built_in_task_is_selectable():
    assert load_config(None, ["data.task=arithmetic"]).data.task == "arithmetic"
    assert load_config().data.task == "chain"
    with pytest.raises(ConfigError, match=r"data\.task: 'sorting' is not allowed.*'arithmetic', 'chain'"):
        load_config(None, ["data.task=sorting"])


def _changed(preset: str, default: dict) -> dict[tuple[str, str], object]:
    values = to_dict(load_config(CONFIGS / preset))
    return {(section, key): values[section][key] for section in default for key in default[section]
            if values[section][key] != default[section][key]}


def test_the_other_tiny_presets_differ_from_the_default_only_where_their_headers_say():
    default = to_dict(load_config())
    chain = _changed("tiny_cpu_chain.yaml", default)
    assert set(chain) == {("run", "dir"), ("prime", "ref_type"), ("ppo", "optim")}, chain
    assert chain[("prime", "ref_type")] == "freeze" and chain[("ppo", "optim")]["lr"] == 5e-5
    addition = _changed("tiny_cpu_addition.yaml", default)
    assert set(addition) == {("run", "dir"), ("data", "task"), ("rollout", "max_tokens"), ("prime", "ref_type"),
                             ("prm", "optim"), ("ppo", "optim")}, addition
    assert (addition[("data", "task")], addition[("rollout", "max_tokens")], addition[("prime", "ref_type")]) == (
        "arithmetic", 24, "freeze")
    for preset in (chain, addition):  # only the learning rate of an optimizer differs
        for section in ("prm", "ppo"):
            if (section, "optim") in preset:
                assert {k: v for k, v in preset[(section, "optim")].items() if k != "lr"} == {
                    k: v for k, v in default[section]["optim"].items() if k != "lr"}


def test_default_prm_settings_are_the_sweeps_only_run_whose_prm_learned():
    """The embedded default's PRM learning rate and beta are the chain sweep's only run in bench/results whose
    PRM learned (last-window prm_loss below ln 2 and prm_acc up), so editing either without the other fails."""
    import json
    import math

    default = load_config()
    sweep = json.loads((CONFIGS.parent / "bench" / "results" / "prm_sweep_cpu_tiny_chain.json").read_text())
    learned = [dict(o.split("=") for o in r["overrides"]) for r in sweep["runs"]
               if r["summary"]["prm_loss/last"] < math.log(2)
               and r["summary"]["prm_acc/last"] > r["summary"]["prm_acc/first"]]
    assert [(float(r["prm.optim.lr"]), float(r["prime.beta"])) for r in learned] == [
        (default.prm.optim.lr, default.prime.beta)], learned


def test_default_is_the_5_seed_comparison_whose_prm_learned():
    """The embedded default is exactly the config of the recorded 5-seed PRIME vs RLOO comparison in which the
    PRM learned on average (prm_loss below ln 2 in the last window, pairwise accuracy up, the correct class's
    mean reward above the wrong one's): its recorded config file plus its overrides give the default, so
    changing any setting without a new measurement fails."""
    import json
    import math

    result = json.loads((CONFIGS.parent / "bench" / "results"
                         / "learning_efficiency_cpu_tiny_chain_ref_policy_lr1.5e-5.json").read_text())
    assert len(result["seeds"]) >= 5
    measured = to_dict(load_config(CONFIGS.parent / result["config"]["trainer_config"],
                                   [*result["config"]["overrides"], "run.dir=runs/prime-tiny"]))
    assert measured == to_dict(load_config())

    def window_mean(key: str, part: slice) -> float:  # the mean over seeds of each seed's window mean
        per_seed = [[v for v in s[key][part] if v is not None] for s in result["evidence"]["prime"].values()]
        return sum(sum(v) / len(v) for v in per_seed) / len(per_seed)

    last, first = slice(-12, None), slice(0, 12)
    assert window_mean("prm_loss", last) < math.log(2)
    assert window_mean("prm_acc", last) > window_mean("prm_acc", first) > 0.5
    assert window_mean("prm/reward_correct", last) > window_mean("prm/reward_wrong", last)
