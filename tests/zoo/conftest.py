import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """The zoo's models are tiny: one intra-op thread.  On a loaded 2-core machine OpenMP's second thread turns a
    microsecond GEMM into milliseconds (measured: addmm 32x16x48, 7 ms with 2 threads vs 3 us with 1), which made
    a 12-point GPT-2 plane take 3 s.  Restored after each test, so nothing outside the zoo is affected."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
