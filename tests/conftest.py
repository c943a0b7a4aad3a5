"""Test configuration: seeded, derandomized hypothesis profile so CI can never flake."""

import os

# Before torch loads OpenMP: spinning worker threads cost ~10x on a loaded 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=40,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The tests use tiny tensors, for which one thread is fastest and immune to contention.
torch.set_num_threads(int(os.environ.get("TEST_NUM_THREADS", "1")))
