"""Public prompt sets shipped with renegx (see README.md here for sources and licences)."""
