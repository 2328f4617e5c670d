"""Deployment tools (image build, flashing, provisioning, broker accounts): they run on the
operator's machine, not on the boards, so the board runtime never imports this package."""
