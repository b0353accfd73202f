"""The live harness: a Pulumi engine for the lab (stands in for the Pulumi CLI and its providers)."""
