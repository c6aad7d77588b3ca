"""Runs online rounds from a folder stream; with --kill_after N it SIGKILLs itself in the
middle of a round, after the learner's N-th update of that run (a crash, not an exception)."""

import argparse
import os
import signal

parser = argparse.ArgumentParser()
parser.add_argument("base")
parser.add_argument("holdout")
parser.add_argument("folder")
parser.add_argument("state")
parser.add_argument("--rounds", type=int, default=1)
parser.add_argument("--kill_after", type=int, default=0)
args = parser.parse_args()

from tfprod.online import FolderStream, OnlineLoop  # noqa: E402
from tfprod.online.learner import Learner  # noqa: E402

if args.kill_after:
    learn, calls = Learner.learn, [0]

    def learn_then_die(self, *a, **k):
        out = learn(self, *a, **k)
        calls[0] += 1
        if calls[0] == args.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    Learner.learn = learn_then_die

loop = OnlineLoop(args.base, args.holdout, model_config_file=os.path.join(args.state, "m.config"),
                  stream=FolderStream(args.folder), state_dir=args.state, min_examples=50,
                  max_examples=100, margin=1.0, learner_args={"buffer_size": 300})
while loop.state["round"] < args.rounds:
    loop.step()
print("round", loop.state["round"], "stable", loop.state["stable"])
