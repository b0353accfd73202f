"""Programs that run on the nodes (HA core, CDR services, migrations) and the layout they share
with the render layer. Imports nothing outside the standard library and itself: it is copied to
the nodes as it is, and Pulumi never reaches it."""
