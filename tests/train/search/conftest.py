"""The frame scorer's tests need the train extra."""

from tiers import needs

pytest_pycollect_makemodule = needs(__file__, "torch", "h5py")
