"""From field devices to readings and back: runners, normalising, reporting."""
