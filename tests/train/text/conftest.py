"""Text-encoder tests need the train extra, except the pure text perturbations and retrieval."""

from tiers import needs

pytest_pycollect_makemodule = needs(
    __file__, "torch", "h5py", except_files={"test_perturb.py", "test_retrieval.py"}
)
