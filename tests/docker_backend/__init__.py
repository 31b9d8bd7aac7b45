"""Tests of the Docker backend; a package, so that its module names never clash with those
of other test folders."""
