"""Carrier-board definitions (TOML), shipped inside the agent package as agent.boards."""
