"""Software updates over the network (docs/updates.md): the board's side (RAUC's tryboot backend,
the updater and its health gate) and the site's (signed bundles, the rollout). Never imports
agent.commands or the simulator."""
