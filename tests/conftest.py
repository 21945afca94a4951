import torch

# One intra-op thread for the whole session (module fixtures included): the tests use small
# tensors, and on a shared 2-core machine a second OpenMP thread makes small ops up to 100x slower.
torch.set_num_threads(1)
