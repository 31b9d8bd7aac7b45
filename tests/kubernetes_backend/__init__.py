"""Tests of the Kubernetes backend; a package, so that its module names never clash with
those of other test folders."""
