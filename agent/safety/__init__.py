"""The safety supervisor and what it needs: modes, checks, events and the one shutdown path."""
