"""What the user asked for, resolved and pinned: config, selectors, resolve, the lock file."""
