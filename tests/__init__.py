"""The test suite.

A deprecated call is a defect: every DeprecationWarning and
PendingDeprecationWarning is an error, under trial as under pytest (whose
``pytest.ini`` says the same, since pytest replaces the global filters for
each test).  Trial collects a test's warnings and re-emits those the test did
not flush, so a deprecated call fails the test that made it.
"""
import warnings

warnings.filterwarnings("error", category=DeprecationWarning)
warnings.filterwarnings("error", category=PendingDeprecationWarning)
