"""Deployment tools behind scripts/build-image, scripts/flash and scripts/provision: they run on
the operator's machine (not on the boards), so they live beside the scripts, not in `agent`."""
