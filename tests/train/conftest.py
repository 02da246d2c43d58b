"""The shared floor's tests (models, checkpoint, recipe) need the train extra; runs is pure."""

from tiers import needs

pytest_pycollect_makemodule = needs(
    __file__, "torch", "h5py", except_files={"test_runs.py", "test_options.py"}
)
