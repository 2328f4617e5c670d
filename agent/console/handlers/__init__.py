"""What each console command does, one module per concern; agent.console.commands lists them.

Each handler takes (processor, args, source) and returns (text, data) or raises
CommandRefused. Work on the agent goes through `processor.in_loop`, so it runs between two
control periods in the loop's thread, and reads the agent through its API (`status()`,
`record()`, `latest_events()`, ...), never its insides; file and config reads that do not touch
the agent run on the caller's thread. No handler imports the command list: `help` reads it from
the processor (`processor.commands`).
"""
