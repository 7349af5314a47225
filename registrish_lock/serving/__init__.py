"""What a host answers: the route table, host configs, serve, check, browse, publish."""
