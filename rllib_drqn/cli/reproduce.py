"""``rllib reproduce``: the paper's three claims by one command (see :mod:`rllib_drqn.reproduce`).

Small scale (the default, CPU): flickering ``CartPole-v1``, 5 seeds, all three claims::

    rllib reproduce --out docs/reproduction

Paper scale: ``rllib reproduce --env FlickeringAtari --game Pong`` (10M env steps per trial, a
GPU learner per trial; ``--smoke`` for a few iterations). Redraw a report from its saved files,
without training: ``rllib reproduce --redraw DIR``.

Exit status: 0 when the report is written (whatever the verdicts), 2 for a bad input (checked
before Ray starts; nothing is written), 3 when interrupted (the report of what finished is
written and marked incomplete).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from rllib_drqn import reproduce
from rllib_drqn.cli.experiment_file import CLIError

__all__ = ["add_parser"]

#: ``--env-steps`` / ``--eval-interval`` defaults: (small scale, paper scale).
_DEFAULT_ENV_STEPS = (30_000, 10_000_000)
#: The paper evaluates every 50k updates: 200k env steps at one update per 4 steps.
_DEFAULT_EVAL_INTERVAL = (5_000, 200_000)
#: ``--smoke``: a few iterations, one seed, one episode per evaluation.
_SMOKE = {"env_steps": 600, "eval_interval": 300, "eval_episodes": 1, "sweep_episodes": 1}

EXIT_INTERRUPTED = 3


def _claims(text: str) -> tuple[str, ...]:
    if text.strip().lower() == "all":
        return reproduce.CLAIMS
    return tuple(part.strip().upper() for part in text.split(",") if part.strip())


def _probs(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise CLIError(
            f"--flicker-probs takes comma-separated numbers in [0, 1], got {text!r}."
        ) from None


def _int(text: str | None, flag: str) -> int | None:
    if text is None:
        return None
    try:
        return int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise CLIError(f"{flag} takes an integer, got {text!r}.") from None


def _gpus(text: str | None, paper_scale: bool) -> float:
    """``--num-gpus-per-learner``; default 1 at the paper's scale (not --smoke), else 0."""
    if text is None:
        return 1.0 if paper_scale else 0.0
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise CLIError(f"--num-gpus-per-learner takes a number >= 0, got {text!r}.")
    return value


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def _float(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise CLIError(f"{flag} takes a number in [0, 1], got {text!r}.") from None


def protocol_from_args(args: argparse.Namespace) -> reproduce.Protocol:
    """The :class:`~rllib_drqn.reproduce.Protocol` the command line asks for (unchecked)."""
    paper = args.env == reproduce.FLICKERING_ATARI
    scale = 1 if paper else 0
    seeds = _int(args.seeds, "--seeds")
    if seeds is not None and seeds < 1:
        raise CLIError(f"--seeds must be >= 1 (the number of seeds), got {seeds}.")
    values = {
        "claims": _claims(args.claims),
        "env_id": args.env,
        "game": args.game,
        "seeds": tuple(range(seeds if seeds is not None else (1 if args.smoke else 5))),
        "env_steps": _or(_int(args.env_steps, "--env-steps"), _DEFAULT_ENV_STEPS[scale]),
        "eval_interval": _or(
            _int(args.eval_interval, "--eval-interval"), _DEFAULT_EVAL_INTERVAL[scale]
        ),
        "eval_episodes": _int(args.eval_episodes, "--eval-episodes"),
        "sweep_episodes": _int(args.sweep_episodes, "--sweep-episodes"),
        "epsilon": _float(args.epsilon, "--epsilon"),
        "flicker_prob": _float(args.flicker_prob, "--flicker-prob"),
        "sweep_probs": _probs(args.flicker_probs),
        "update_interval": _int(args.update_interval, "--update-interval"),
        "smoke": args.smoke,
        "num_gpus_per_learner": _gpus(args.num_gpus_per_learner, paper and not args.smoke),
    }
    if args.smoke:
        for key, value in _SMOKE.items():
            if getattr(args, key) is None:  # Explicit flags win over --smoke's.
                values[key] = value
    return reproduce.Protocol(**{key: value for key, value in values.items() if value is not None})


def _default_out(protocol: reproduce.Protocol) -> Path:
    name = protocol.game if protocol.paper_scale else protocol.env_id
    slug = re.sub(r"[^A-Za-z0-9]+", "-", str(name)).strip("-").lower()
    return Path("reproduction") / (f"{slug}-smoke" if protocol.smoke else slug)


def _run_reproduce(args: argparse.Namespace) -> int:
    try:
        if args.redraw is not None:
            out = Path(args.redraw)
            protocol, records = reproduce.load_records(out)
            document = reproduce.write_report(out, protocol, records)
            _print_verdicts(document, out)
            return 0
        protocol = protocol_from_args(args)
        out = Path(args.out) if args.out else _default_out(protocol)
        trials = len(reproduce.contenders_for(reproduce.check_protocol(protocol)))
        print(
            f"Reproducing {', '.join(protocol.claims)} on {protocol.task}: "
            f"{trials} contenders x {len(protocol.seeds)} seeds, {protocol.env_steps:,} env "
            f"steps each; report in {out}",
            flush=True,
        )
        document = reproduce.run_reproduction(protocol, out, verbose=args.verbose)
    except reproduce.ReproduceError as error:
        raise CLIError(str(error)) from None
    _print_verdicts(document, out)
    return 0 if document["complete"] else EXIT_INTERRUPTED


def _print_verdicts(document: dict, out: Path) -> None:
    for claim, result in document["claims"].items():
        print(f"{claim} {result['verdict']}: {result['why']}")
    if not document["complete"]:
        print(f"INCOMPLETE: unfinished trials {document['unfinished_trials']}")
    print(f"Report: {out / reproduce.REPORT_FILE}")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``rllib reproduce``."""
    parser = subparsers.add_parser(
        "reproduce",
        help="reproduce the DRQN paper's three claims (DRQN vs frame-stacked DQN)",
        description="Train DRQN (1 observation per step) and RLlib's DQN (the last k "
        "observations) on a flickering task as Tune trials, sweep each best checkpoint over "
        "flicker probabilities with `rllib evaluate`'s code, and write report.md, claims.json "
        "(verdicts by rules fixed in advance) and the plots c1.png, c2.png, c3.png. C1: DRQN "
        "does as well as DQN-10 at p = 0.5; C2: DRQN's score rises with observability; C3: "
        "trained at p = 0, DRQN keeps a larger share of its score than DQN-4 when flickered.",
        epilog="Exit status: 0 when the report is written, 2 for a bad input (nothing is "
        "written), 3 when interrupted (a report of what finished is written, marked "
        "incomplete).",
    )
    parser.add_argument(
        "--claims", default="all", metavar="C1,C2,C3", help="claims to test (default all)"
    )
    parser.add_argument(
        "--env",
        default=reproduce.SMALL_SCALE_ENV,
        metavar="ID",
        help="a gymnasium id with Discrete actions and a Box observation (default "
        f"{reproduce.SMALL_SCALE_ENV}), or FlickeringAtari with --game for the paper's scale",
    )
    parser.add_argument("--game", metavar="GAME", help="ALE game with --env FlickeringAtari")
    parser.add_argument(
        "--seeds", metavar="N", help="seeds 0..N-1 per contender (default 5; 1 with --smoke)"
    )
    parser.add_argument(
        "--env-steps",
        metavar="N",
        help=f"env steps per trial (default {_DEFAULT_ENV_STEPS[0]:,}; "
        f"{_DEFAULT_ENV_STEPS[1]:,} with FlickeringAtari)",
    )
    parser.add_argument(
        "--eval-interval",
        metavar="N",
        help="env steps between periodic evaluations; the best is kept (default "
        f"{_DEFAULT_EVAL_INTERVAL[0]:,}; {_DEFAULT_EVAL_INTERVAL[1]:,} with FlickeringAtari)",
    )
    parser.add_argument(
        "--eval-episodes", metavar="N", help="episodes per periodic evaluation (default 10)"
    )
    parser.add_argument(
        "--sweep-episodes", metavar="N", help="episodes per sweep probability (default 10)"
    )
    parser.add_argument(
        "--epsilon", default="0.05", metavar="E", help="evaluation epsilon (default 0.05)"
    )
    parser.add_argument(
        "--flicker-prob",
        default="0.5",
        metavar="P",
        help="training flicker probability of C1 and C2 (default 0.5)",
    )
    parser.add_argument(
        "--flicker-probs",
        default=",".join(f"{p:g}" for p in reproduce.SWEEP_PROBS),
        metavar="P,P,...",
        help="the sweep's flicker probabilities (default 0,0.1,...,1)",
    )
    parser.add_argument(
        "--update-interval",
        metavar="N",
        help="env steps per update of 32 samples, small scale (default 4)",
    )
    parser.add_argument(
        "--num-gpus-per-learner",
        metavar="G",
        help="GPUs per trial's learner (default 1 with FlickeringAtari, except --smoke; else 0)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few iterations (600 env steps, 1 seed, 1 episode per evaluation)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="the report directory, which must not exist (default ./reproduction/<env>)",
    )
    parser.add_argument(
        "--redraw",
        metavar="DIR",
        help="write the report, claims and plots again from DIR's saved results; trains nothing",
    )
    parser.add_argument(
        "--verbose", type=int, default=1, choices=(0, 1, 2), help="Tune's verbosity (default 1)"
    )
    parser.set_defaults(handler=_run_reproduce)
