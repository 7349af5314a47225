"""The static tree: its layout, observed state, the pure plan, apply, gc, the tree lock."""
