"""``rllib reproduce``: bad inputs, the claims' rules on known numbers, a tiny real run."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import ray

from rllib_drqn import reproduce
from rllib_drqn.cli import main
from rllib_drqn.reproduce import Contender, Protocol, TrialRecord

#: A budget that trains every contender for real, in about a minute on 2 cores.
TINY = ["--env-steps", "400", "--eval-interval", "200", "--seeds", "1"]
TINY += ["--eval-episodes", "1", "--sweep-episodes", "1"]


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fails the test if Ray is started or a trial trains."""

    def fail(*args: object, **kwargs: object) -> None:
        pytest.fail("Ray or training was started before the input was checked")

    monkeypatch.setattr(ray, "init", fail)
    monkeypatch.setattr(reproduce, "run_training", fail)
    yield


BAD_INPUTS = [
    ("unknown-claim", ["--claims", "C1,C9"], ["unknown claim(s) ['C9']", "--claims"]),
    ("continuous-actions", ["--env", "Pendulum-v1"], ["Pendulum-v1", "Discrete"]),
    ("unknown-env", ["--env", "CartPol-v1"], ["unknown env 'CartPol-v1'", "CartPole-v1"]),
    ("not-a-box", ["--env", "FrozenLake-v1"], ["FrozenLake-v1", "Box observation"]),
    ("p-above-1", ["--flicker-prob", "1.5"], ["--flicker-prob must lie in [0, 1]", "1.5"]),
    ("p-below-0", ["--flicker-probs", "0,-0.1,1"], ["--flicker-probs must lie in [0, 1]"]),
    ("zero-seeds", ["--seeds", "0"], ["--seeds must be >= 1"]),
    ("eval-beyond-budget", ["--env-steps", "100"], ["--eval-interval 5000 exceeds"]),
    ("game-without-atari", ["--game", "Pong"], ["--game Pong needs --env FlickeringAtari"]),
    ("atari-without-game", ["--env", "FlickeringAtari"], ["needs --game"]),
    ("unknown-game", ["--env", "FlickeringAtari", "--game", "Pongg"], ["Unknown Atari game"]),
    ("sweep-lacks-c3", ["--flicker-probs", "0,0.5,1"], ["--flicker-probs lacks", "0.1"]),
]


@pytest.mark.parametrize(
    ("args", "expected"), [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUTS]
)
def test_bad_input_exits_2_before_anything_starts(
    args: list[str],
    expected: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_ray: None,
) -> None:
    out = tmp_path / "report"
    status = main(["reproduce", *args, "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("rllib: error: ") and err.count("\n") == 1, err
    for fragment in expected:
        assert fragment in err
    assert not out.exists()


def test_existing_report_directory_is_never_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_ray: None
) -> None:
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").write_text("an earlier run")
    assert main(["reproduce", "--out", str(out)]) == 2
    assert "exists; pass a new --out" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["report.md"]
    assert (out / "report.md").read_text() == "an earlier run"


def test_fairness_rule_holds_in_the_built_configs() -> None:
    """Same updates of 32 samples of 10 observations; the same shared settings."""
    protocol = Protocol()
    configs = {
        c.key: reproduce.build_contender_config(protocol, c, 0)
        for c in reproduce.contenders_for(protocol)
    }
    assert set(configs) == {"DRQN@p0.5", "DQN-10@p0.5", "DRQN@p0", "DQN-4@p0"}
    for key, config in configs.items():
        config.validate()
        assert config.get_rollout_fragment_length() * config.num_envs_per_env_runner == 4
        assert config.training_intensity is None  # One update per sampled fragment.
        if key.startswith("DRQN"):
            assert (config.num_sequences_per_batch, config.max_seq_len) == (32, 10)
            assert config.update_mode == "random"  # The paper's: zero state, 10 steps.
            assert config.env_config["frame_stack"] == 1
        else:
            assert config.train_batch_size_per_learner == 32
            assert config.env_config["frame_stack"] == (10 if "p0.5" in key else 4)
    drqn, dqn = configs["DRQN@p0.5"], configs["DQN-10@p0.5"]
    for setting in ("lr", "gamma", "n_step", "target_network_update_freq", "epsilon"):
        assert getattr(drqn, setting) == getattr(dqn, setting), setting


def test_paper_scale_uses_the_presets() -> None:
    protocol = Protocol(
        env_id="FlickeringAtari", game="Pong", env_steps=10_000_000, eval_interval=200_000
    )
    reproduce.check_protocol(protocol)
    drqn = reproduce.build_contender_config(protocol, Contender("DRQN", 1, 0.5), 0)
    dqn = reproduce.build_contender_config(protocol, Contender("DQN", 10, 0.5), 0)
    assert drqn.env == dqn.env == "FlickeringAtari"
    assert (drqn.model_config["lstm_cell_size"], drqn.lr) == (512, 1e-4)
    assert dqn.env_config["frame_stack"] == 10 and dqn.env_config["game"] == "Pong"


# ---- The rules, on numbers written as a sweep would write them ---------------------------


def _write_records(
    out: Path, protocol: Protocol, returns: Mapping[str, Mapping[int, Mapping[float, float]]]
) -> list[TrialRecord]:
    """Records and evaluation.json files with the given mean returns (key -> seed -> p)."""
    by_key = {c.key: c for c in reproduce.contenders_for(protocol)}
    records = []
    for key, seeds in returns.items():
        for seed, by_prob in seeds.items():
            path = out / "evaluations" / f"{key}_seed{seed}" / "evaluation.json"
            path.parent.mkdir(parents=True)
            results = [{"flicker_prob": p, "mean": r} for p, r in by_prob.items()]
            path.write_text(json.dumps({"results": results}))
            records.append(
                TrialRecord(
                    by_key[key],
                    seed,
                    True,
                    100,
                    10,
                    1.0,
                    "ckpt",
                    evaluation=str(path.relative_to(out)),
                )
            )
    return records


def _curve(top: float, slope: float) -> dict[float, float]:
    return {p: top - slope * p for p in reproduce.SWEEP_PROBS}


def test_rules_decide_for_drqn_when_it_is_better(tmp_path: Path) -> None:
    protocol = Protocol(seeds=(0, 1, 2))
    returns = {
        "DRQN@p0.5": {s: _curve(400 + s, 300) for s in range(3)},
        "DQN-10@p0.5": {s: _curve(200 + 5 * s, 100) for s in range(3)},
        "DRQN@p0": {s: _curve(500 - s, 100) for s in range(3)},  # Keeps 80% at p = 1.
        "DQN-4@p0": {s: _curve(500 + s, 400) for s in range(3)},  # Keeps 20%.
    }
    claims = reproduce.decide_claims(
        protocol, tmp_path, _write_records(tmp_path, protocol, returns)
    )
    assert {c: claims[c]["verdict"] for c in claims} == dict.fromkeys(reproduce.CLAIMS, "holds")
    assert claims["C1"]["numbers"]["p_value"] < 0.05
    assert claims["C2"]["numbers"]["spearman_rho"] == pytest.approx(1.0)
    assert all(claims["C3"]["numbers"]["DRQN_above_at"])
    assert all(claims[c]["rule"] == reproduce.RULES[c] for c in claims)


def test_rules_decide_against_drqn_when_it_is_worse(tmp_path: Path) -> None:
    protocol = Protocol(seeds=(0, 1, 2))
    returns = {
        "DRQN@p0.5": {s: _curve(100 + s, -50) for s in range(3)},  # Falls with observability.
        "DQN-10@p0.5": {s: _curve(400 + s, 0) for s in range(3)},
        "DRQN@p0": {s: _curve(500 + s, 450) for s in range(3)},
        "DQN-4@p0": {s: _curve(500 - s, 50) for s in range(3)},
    }
    claims = reproduce.decide_claims(
        protocol, tmp_path, _write_records(tmp_path, protocol, returns)
    )
    assert {c: claims[c]["verdict"] for c in claims} == dict.fromkeys(
        reproduce.CLAIMS, "does not hold"
    )
    assert not any(claims["C3"]["numbers"]["DRQN_above_at"])


def test_c1_is_non_inferiority_within_ten_percent(tmp_path: Path) -> None:
    """5% below DQN-10 with little spread is 'as well'; 30% below is not."""
    protocol = Protocol(claims=("C1",), seeds=(0, 1, 2, 3))
    for drqn_mean, verdict in ((190.0, "holds"), (140.0, "does not hold")):
        out = tmp_path / str(drqn_mean)
        returns = {
            "DRQN@p0.5": {s: _curve(drqn_mean + s, 0) for s in range(4)},
            "DQN-10@p0.5": {s: _curve(200 + s, 0) for s in range(4)},
        }
        claims = reproduce.decide_claims(protocol, out, _write_records(out, protocol, returns))
        assert claims["C1"]["verdict"] == verdict


def test_unfinished_trials_mark_the_report_incomplete(tmp_path: Path) -> None:
    protocol = Protocol(seeds=(0, 1))
    returns = {
        k: {s: _curve(300, 100) for s in range(2)}
        for k in ("DRQN@p0.5", "DQN-10@p0.5", "DRQN@p0", "DQN-4@p0")
    }
    records = _write_records(tmp_path, protocol, returns)
    records.append(TrialRecord(Contender("DRQN", 1, 0.5), 2, False, 50, 0, None, None))
    document = reproduce.write_report(tmp_path, protocol, records)
    assert document["complete"] is False
    assert document["unfinished_trials"] == ["DRQN@p0.5 seed 2"]
    assert "**Incomplete**" in (tmp_path / "report.md").read_text()


# ---- A tiny real run -----------------------------------------------------------------------


def test_tiny_run_writes_every_table_plot_and_verdict(
    tmp_path: Path, ray_session: None, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    assert main(["reproduce", *TINY, "--out", str(out), "--verbose", "0"]) == 0
    printed = capsys.readouterr().out
    for claim in reproduce.CLAIMS:
        assert f"{claim} holds" in printed or f"{claim} does not hold" in printed

    document = json.loads((out / "claims.json").read_text())
    assert document["complete"] is True
    assert set(document["claims"]) == set(reproduce.CLAIMS)
    for claim, result in document["claims"].items():
        assert result["verdict"] in ("holds", "does not hold")
        assert result["rule"] == reproduce.RULES[claim]
        assert result["numbers"]
    for name in reproduce.PLOT_FILES.values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    trials = json.loads((out / "trials.json").read_text())
    assert sorted(t["contender_key"] for t in trials) == [
        "DQN-10@p0.5",
        "DQN-4@p0",
        "DRQN@p0",
        "DRQN@p0.5",
    ]
    for trial in trials:
        assert trial["finished"] and trial["env_steps"] >= 400
        assert trial["updates"] > 0  # It trained, not only sampled.
        # Every periodic evaluation is kept; the best is the highest of them.
        scores = [score for _, score in trial["evaluations"]]
        assert scores and max(scores) == pytest.approx(trial["best_eval_return"])
        assert Path(trial["checkpoint"]).is_dir()  # The best checkpoint, kept by Tune.
        # Every training episode, in the trial directory (for `rllib plot`).
        assert (Path(trial["checkpoint"]).parent / "episodes.csv").read_text().count("\n") > 1
        sweep = json.loads((out / trial["evaluation"]).read_text())
        assert [r["flicker_prob"] for r in sweep["results"]] == list(reproduce.SWEEP_PROBS)

    report = (out / "report.md").read_text()
    for heading in (
        "## Verdicts",
        "## Trials",
        "## Return against the flicker probability",
        "## C3: percentage of original score",
        "## Plots",
    ):
        assert heading in report
    for name in reproduce.PLOT_FILES.values():
        assert f"]({name})" in report

    # Step 3 reads only files: a redraw rebuilds the same claims and plots.
    for name in ("claims.json", "report.md", *reproduce.PLOT_FILES.values()):
        (out / name).unlink()
    shutil.rmtree(out / "runs")  # Not even the checkpoints are needed.
    assert main(["reproduce", "--redraw", str(out)]) == 0
    assert json.loads((out / "claims.json").read_text()) == document
    assert (out / "report.md").read_text() == report


def test_paper_scale_without_a_gpu_fails_before_training(
    tmp_path: Path, ray_session: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trial that can never be placed would leave Tune PENDING for ever: say so instead."""
    out = tmp_path / "report"
    status = main(["reproduce", "--env", "FlickeringAtari", "--game", "Pong", "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2
    assert "needs 1 GPU(s) but the Ray cluster has 0" in err
    assert "--num-gpus-per-learner 0" in err
    assert not out.exists()


def test_ctrl_c_leaves_a_report_marked_incomplete(tmp_path: Path) -> None:
    """SIGINT mid-training: Tune stops the trials, the report says what did not finish, exit 3."""
    out = tmp_path / "report"
    command = [sys.executable, "-m", "rllib_drqn", "reproduce", "--claims", "C1", "--seeds", "1"]
    command += ["--env-steps", "50000", "--eval-interval", "500", "--eval-episodes", "1"]
    command += ["--sweep-episodes", "1", "--out", str(out), "--verbose", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not list((out / "runs").glob("train/*/checkpoint_*")):  # Both trials are training.
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(1)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=180)

    assert process.returncode == 3, output
    assert "INCOMPLETE" in output
    document = json.loads((out / "claims.json").read_text())
    assert document["complete"] is False
    assert sorted(document["unfinished_trials"]) == ["DQN-10@p0.5 seed 0", "DRQN@p0.5 seed 0"]
    assert "**Incomplete**" in (out / "report.md").read_text()
    assert (out / "c1.png").exists() and (out / "trials.json").exists()
