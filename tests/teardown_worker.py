"""Run under torchrun by tests/test_distributed.py: join the group as the CLI does, then import
what the CLI imports lazily (torchvision, hence torch._dynamo and torch.distributed.nn), leave the
group, and record which threads are still alive."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from demhec import distributed


def threads() -> list[str]:
    return sorted(Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task"))


if __name__ == "__main__":
    distributed.setup("cpu")
    import torchvision  # noqa: F401  (after setup, like the CLI's commands)

    distributed.barrier()
    during = threads()
    distributed.teardown()
    rank = os.environ["RANK"]
    (Path(sys.argv[1]) / f"threads_{rank}.json").write_text(json.dumps({"during": during, "after": threads()}))
