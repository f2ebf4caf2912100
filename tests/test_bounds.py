"""
Tests for L{twisted_frames.bounds}.
"""

from __future__ import annotations

import argparse

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from twisted_frames.bounds import bounded, boundedArgument


class BoundedTests(SynchronousTestCase):
    """
    L{bounded} coerces a C{usage.Options} parameter into a number within
    its bounds, or says in one line why not.
    """

    def refused(self, coerce: object, value: str) -> str:
        """
        @return: the message of the L{ValueError} C{coerce(value)} raises.
        """
        assert callable(coerce)
        with self.assertRaises(ValueError) as e:
            coerce(value)
        return str(e.exception)

    def test_inRange(self) -> None:
        """
        Values within the bounds, both ends included, come back as numbers
        of the given kind.
        """
        port = bounded("--udp", 0, 65535)
        self.assertEqual((port("0"), port("65535"), port("8007")), (0, 65535, 8007))
        seconds = bounded("--grace", 0.001, kind=float)
        self.assertEqual(seconds("0.5"), 0.5)
        self.assertIsInstance(seconds("2"), float)

    def test_notANumber(self) -> None:
        """
        A value that is not a number of the kind names what it must be.
        """
        self.assertEqual(
            self.refused(bounded("--udp", 0, 65535), "x"), "--udp must be a whole number, not 'x'"
        )
        self.assertEqual(
            self.refused(bounded("--udp", 0, 65535), "1.5"),
            "--udp must be a whole number, not '1.5'",
        )
        self.assertEqual(
            self.refused(bounded("--t", 0, kind=float, noun="a number of seconds"), "soon"),
            "--t must be a number of seconds, not 'soon'",
        )

    def test_notFinite(self) -> None:
        """
        C{nan} and C{inf} are not numbers here: no range holds them.
        """
        for value in ("nan", "inf", "-inf"):
            self.assertEqual(
                self.refused(bounded("--t", 0, 10, kind=float), value),
                f"--t must be a number, not {value!r}",
            )

    def test_outOfRange(self) -> None:
        """
        A number out of range names the range, with the unit and note.
        """
        self.assertEqual(
            self.refused(bounded("--udp", 0, 65535), "70000"),
            "--udp must be in 0..65535, not 70000",
        )
        self.assertEqual(
            self.refused(bounded("--max-procs", 1), "0"), "--max-procs must be at least 1, not 0"
        )
        timeout = bounded("--t", 0, 60, kind=float, unit=" seconds", note=" (0: none)")
        self.assertEqual(
            self.refused(timeout, "-1.5"), "--t must be in 0..60 seconds (0: none), not -1.5"
        )

    def test_coerceDoc(self) -> None:
        """
        The C{coerceDoc} that C{--help} and the option reference show
        states the range, unless given.
        """
        self.assertEqual(bounded("--a", 1, 9).coerceDoc, "An integer in 1..9.")
        self.assertEqual(bounded("--a", 0.5, kind=float).coerceDoc, "At least 0.5.")
        self.assertEqual(bounded("--a", 0, doc="Anything.").coerceDoc, "Anything.")

    def test_usageOptions(self) -> None:
        """
        In an C{optParameters} row, the value is coerced and the message
        reaches the L{usage.UsageError}.
        """

        class Options(usage.Options):
            optParameters = [["count", None, 3, "How many.", bounded("--count", 1, 10)]]

        options = Options()
        options.parseOptions(["--count", "7"])
        self.assertEqual(options["count"], 7)
        with self.assertRaises(usage.UsageError) as e:
            Options().parseOptions(["--count", "11"])
        self.assertIn("--count must be in 1..10, not 11", str(e.exception))


class BoundedArgumentTests(SynchronousTestCase):
    """
    L{boundedArgument} is the same check as an C{argparse} C{type=}.
    """

    def parser(self, **kwargs: object) -> argparse.ArgumentParser:
        """
        @return: a parser with one C{--n} argument of
            C{boundedArgument(**kwargs)}, raising instead of exiting.
        """
        parser = argparse.ArgumentParser(prog="frames", exit_on_error=False)
        parser.add_argument("--n", type=boundedArgument(**kwargs))  # type: ignore[call-overload]
        return parser

    def test_inRange(self) -> None:
        """
        A value in range is parsed into a number.
        """
        self.assertEqual(self.parser(low=1).parse_args(["--n", "5"]).n, 5)
        self.assertEqual(self.parser(low=0, kind=float).parse_args(["--n", "0.25"]).n, 0.25)

    def test_refused(self) -> None:
        """
        Out of range or not a number: an C{argparse.ArgumentTypeError} with
        the same wording as L{bounded}, without the option's name (argparse
        puts it in front).
        """
        cases = [
            (boundedArgument(1), "0", "must be at least 1, not 0"),
            (boundedArgument(1), "many", "must be a whole number, not 'many'"),
            (boundedArgument(1, 36500), "40000", "must be in 1..36500, not 40000"),
            (
                boundedArgument(0, kind=float, noun="a number of seconds", unit=" seconds"),
                "-1",
                "must be at least 0 seconds, not -1",
            ),
            (
                boundedArgument(0, kind=float, noun="a number of seconds", unit=" seconds"),
                "inf",
                "must be a number of seconds, not 'inf'",
            ),
        ]
        for coerce, value, message in cases:
            with self.assertRaises(argparse.ArgumentTypeError) as e:
                coerce(value)
            self.assertEqual(str(e.exception), message)

    def test_namedByArgparse(self) -> None:
        """
        argparse reports the message after the option's name.
        """
        with self.assertRaises(argparse.ArgumentError) as e:
            self.parser(low=1).parse_args(["--n", "0"])
        self.assertEqual(str(e.exception), "argument --n: must be at least 1, not 0")
