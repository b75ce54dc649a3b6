"""Suite-wide test settings."""

import torch


def pytest_configure(config):
    # The tests run tiny models: one intra-op thread is as fast on an idle machine and
    # several times faster on a busy one (thread oversubscription on 2 cores).
    torch.set_num_threads(1)
