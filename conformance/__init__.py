"""Autobahn TestSuite conformance harness for asgiws (see README.md)."""
