"""Ray Serve deployments and the app that composes them."""
