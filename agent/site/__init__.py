"""The site role (`hearth site`): building demand in watts, split into module budgets."""
