"""
Tests for the suite's warning filters: a warning from this project's code
is an error under pytest and Trial alike.
"""

from __future__ import annotations

import warnings

from twisted.trial.unittest import SynchronousTestCase

import twisted_frames
from tests import projectWarningFilters


class ProjectWarningFilterTests(SynchronousTestCase):
    """
    The filters of C{pyproject.toml}, as L{tests} applies them for Trial.
    """

    def warn(self, message: str, category: type[Warning], module: str) -> None:
        """
        Warn as from C{module} with only the project's filters in place.
        """
        with warnings.catch_warnings():
            warnings.resetwarnings()
            warnings.simplefilter("ignore")
            for action, text, kind, pattern in projectWarningFilters():
                warnings.filterwarnings(action, text, kind, pattern)  # type: ignore[call-overload]
            warnings.warn_explicit(message, category, module + ".py", 1, module=module)

    def test_ownCodeIsAnError(self) -> None:
        """
        A warning from a module of the package or of the tests, named as
        pytest names it or as the path Trial re-emits it with, is raised.
        """
        path = twisted_frames.__file__.removesuffix("/__init__.py")
        for module in ("twisted_frames.tls", "tests.test_tls", path + "/tls", "/x/tests/test_a"):
            for category in (DeprecationWarning, UserWarning):
                self.assertRaises(category, self.warn, "old", category, module)

    def test_pyOpenSSLObjectsAreAnError(self) -> None:
        """
        pyOpenSSL's deprecation of its own X509 and PKey objects is raised
        though pyOpenSSL warns it from its own module.
        """
        message = "Passing pyOpenSSL X509 objects is deprecated."
        self.assertRaises(
            DeprecationWarning, self.warn, message, DeprecationWarning, "OpenSSL.SSL"
        )

    def test_thirdPartyLeftAlone(self) -> None:
        """
        Other warnings from third-party modules, including ones whose names
        merely contain the package's, are not raised.
        """
        for module in ("OpenSSL.SSL", "/venv/site-packages/twisted/x", "not_twisted_frames_x"):
            self.warn("old", DeprecationWarning, module)
