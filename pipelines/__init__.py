"""Ray wiring of the stages (build, refresh, ...). Stage code itself never imports Ray."""
