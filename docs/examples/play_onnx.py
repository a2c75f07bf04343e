"""Play a gymnasium env with a DRQN exported by `rllib export --format onnx`: no torch, no Ray.

Usage: python docs/examples/play_onnx.py MODEL_DIR ENV_ID [EPISODES]
"""

import functools
import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import onnxruntime

model_dir, env_id, *rest = Path(sys.argv[1]), *sys.argv[2:]
episodes = int(rest[0]) if rest else 1
meta = json.loads((model_dir / "model.json").read_text())
session = onnxruntime.InferenceSession(str(model_dir / meta["model_file"]))
names = [spec["name"] for spec in meta["outputs"]]
env = gym.make(env_id)
for episode in range(episodes):
    obs, _ = env.reset(seed=episode)
    feed = {  # An episode's first step: zero state, no previous action (-1) or reward (0).
        s["name"]: np.full([1, *s["shape"][1:]], s["at_episode_start"], s["dtype"])
        for s in meta["inputs"]
        if s["kind"] != "observation"
    }
    total, done = 0.0, False
    while not done:
        for spec in meta["inputs"]:  # One input per observation leaf (Dict/Tuple: by path).
            if spec["kind"] == "observation":
                leaf = functools.reduce(lambda o, key: o[key], spec["path"], obs)
                feed[spec["name"]] = np.asarray(leaf, spec["dtype"])[None]
        out = dict(zip(names, session.run(names, feed), strict=True))
        obs, reward, terminated, truncated, _ = env.step(action := int(out["action"][0]))
        total, done = total + float(reward), terminated or truncated
        for spec in meta["inputs"]:  # Carry the state, the previous action and reward.
            if spec["kind"] == "state":
                feed[spec["name"]] = out[spec["output"]]
            elif spec["kind"] in ("prev_action", "prev_reward"):
                value = action if spec["kind"] == "prev_action" else reward
                feed[spec["name"]] = np.array([value], spec["dtype"])
    print(f"episode {episode}: return {total:g}")
