"""Where images come from: the registry client, auth, credentials, local sources."""
