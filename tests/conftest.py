import os
import sys

# test helper modules (x86util, qemu_serial) live next to the tests
sys.path.insert(0, os.path.dirname(__file__))


# ---- no test may meet an internal error of the vCPU unless it says it expects one --------
import pytest  # noqa: E402

from nitdbg.x86.events import Events  # noqa: E402

_internal_errors: list[str] = []
_original_internal_error = Events._internal_error


def _recording_internal_error(self, rip, e):  # noqa: ANN001, ANN202
    rv = _original_internal_error(self, rip, e)
    _internal_errors.append(self.internal_error.line())
    return rv


Events._internal_error = _recording_internal_error   # every Cpu, in every test


def pytest_configure(config):  # noqa: ANN001, ANN201
    config.addinivalue_line("markers", "internal_error_expected: the test provokes a vCPU "
                                       "internal error on purpose")


@pytest.fixture(autouse=True)
def _fail_on_internal_error(request):  # noqa: ANN001, ANN202
    """A scenario, a test kernel or any guest code that hits a bug in nitdbg fails the test."""
    del _internal_errors[:]
    yield
    if _internal_errors and request.node.get_closest_marker("internal_error_expected") is None:
        found = list(_internal_errors)
        del _internal_errors[:]
        pytest.fail(f"vCPU internal error(s): {found[:3]}", pytrace=False)
