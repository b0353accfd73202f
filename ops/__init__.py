"""Operator actions on a running cluster, over SSH (not Pulumi): restore."""
